"""Find or start the local cluster (control plane + simulated GPU nodes) the demo runs on."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..testing.cluster import build, controlplane
from ..testing.cluster.controlplane import ClusterState
from ..testing.cluster.simnodes import start_simulated
from .kube import Cluster

DEFAULT_STATE_DIR = Path(os.environ.get("VLLM_SLEEP_DEV_DIR", "/dev/shm/vllm-sleep-dev"))
SIM_KUBELET = "sim-kubelet"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
KUBELET_DEFAULT_SCALE = 0.05  # the sim-kubelet's own --time-scale default


@dataclass
class LocalCluster:
    state: ClusterState
    cluster: Cluster
    host_scale: float  # the sim-kubelet's --time-scale; engines multiply their own with it
    started: bool  # False: an already running `vllm-sleep dev` cluster was reused


def is_running(state: ClusterState | None) -> bool:
    """Reusable only when the whole control plane and the sim-kubelet are alive (the demo
    needs simulated GPU nodes; a `dev up --no-kubelet` cluster does not qualify)."""
    if state is None or SIM_KUBELET not in state.pids:
        return False
    alive = state.alive()
    return all(alive.get(name, False) for name in (*CONTROL_PLANE, SIM_KUBELET))


def ensure(
    state_dir: Path, time_scale: float, log: Callable[[str], None], *, gpu_nodes: int = 2
) -> LocalCluster:
    bins = build.ensure_all(log)  # cached after the first `make build`: only version checks
    kubectl = str(bins["k8s"] / "kubectl")
    state = ClusterState.load(state_dir)
    if is_running(state):
        assert state is not None
        scale = sim_kubelet_scale(state.pids[SIM_KUBELET]) or KUBELET_DEFAULT_SCALE
        cluster = Cluster(Path(state.kubeconfig), kubectl, state.kubelet_admin_url)
        return LocalCluster(state, cluster, scale, started=False)
    if state is not None and any(state.alive().values()):
        # Half a cluster (something crashed): stop the rest rather than guess what is usable.
        log(f"stopping the incomplete cluster in {state_dir}")
        controlplane.stop(state)
    state = start_simulated(
        state_dir, bins, gpu_nodes=gpu_nodes, gpus_per_node=2, time_scale=time_scale
    )
    cluster = Cluster(Path(state.kubeconfig), kubectl, state.kubelet_admin_url)
    return LocalCluster(state, cluster, time_scale, started=True)


def sim_kubelet_scale(pid: int) -> float | None:
    """The running sim-kubelet's --time-scale, read from its command line (it has no API for it)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    return parse_time_scale(argv)


def parse_time_scale(argv: list[str]) -> float | None:
    for i, arg in enumerate(argv):
        if arg.startswith("--time-scale="):
            return float(arg.split("=", 1)[1])
        if arg == "--time-scale" and i + 1 < len(argv):
            return float(argv[i + 1])
    return None


def stop(state: ClusterState) -> list[str]:
    """Stop every recorded process (operator and gateway included); return those still alive."""
    import shutil

    controlplane.stop(state)
    left = [name for name, alive in state.alive().items() if alive]
    if not left:
        shutil.rmtree(state.state_dir, ignore_errors=True)
    return left
