"""Start the sim-kubelet beside a local control plane and record it in the cluster state."""

from __future__ import annotations

import sys
from pathlib import Path

from .controlplane import ClusterState, start, stop
from .processes import ClusterError, free_port, http_ok, spawn, wait_ready


def start_sim_kubelet(
    state: ClusterState,
    gpu_nodes: int = 2,
    gpus_per_node: int = 2,
    gpu_memory: str = "80Gi",
    time_scale: float = 0.05,
    timeout: float = 60.0,
) -> None:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm_sleep.testing.kubelet",
        f"--kubeconfig={state.state_dir}/kubelet.kubeconfig",
        f"--gpu-nodes={gpu_nodes}",
        f"--gpus-per-node={gpus_per_node}",
        f"--gpu-memory={gpu_memory}",
        f"--time-scale={time_scale}",
        f"--admin-port={port}",
    ]
    proc = spawn("sim-kubelet", argv, state.logs)
    state.pids["sim-kubelet"] = proc.pid
    state.kubelet_admin_url = f"http://127.0.0.1:{port}"
    state.launches["sim-kubelet"] = {
        "argv": argv,
        "probe": f"{state.kubelet_admin_url}/healthz",
        "token": None,
        "expect": None,
    }
    state.save()
    try:
        wait_ready(
            "sim-kubelet", proc, http_ok(f"{state.kubelet_admin_url}/healthz"), state.logs, timeout
        )
    except ClusterError:
        stop(state)
        raise


def start_simulated(
    state_dir: Path,
    bins: dict[str, Path],
    *,
    gpu_nodes: int = 2,
    gpus_per_node: int = 2,
    gpu_memory: str = "80Gi",
    time_scale: float = 0.05,
) -> ClusterState:
    """A control plane plus simulated GPU nodes: what `dev up`, the tests, the bench and the
    demo all start."""
    state = start(state_dir, bins)
    start_sim_kubelet(
        state,
        gpu_nodes=gpu_nodes,
        gpus_per_node=gpus_per_node,
        gpu_memory=gpu_memory,
        time_scale=time_scale,
    )
    return state
