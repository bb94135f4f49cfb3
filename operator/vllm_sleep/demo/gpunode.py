"""The demo's own simulated GPU node: one node, one 80 GiB GPU, shared by every demo model.

A second sim-kubelet beside the cluster's own registers `demo-gpu-0` with a single device, so the
demo's GPUPool holds exactly one GPU however many nodes the cluster has. The node carries a demo
taint (the pool tolerates it), so other workloads never land on it. Its pid goes into the
cluster's state (so `vllm-sleep dev down` stops it) and its admin URL into demo-gpu.json, so a
second demo run reuses it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from ..testing.cluster.processes import ClusterError, free_port, http_ok, pid_alive, spawn
from ..testing.cluster.processes import wait_ready as wait_process
from .kube import Cluster, DemoError

NODE_PREFIX = "demo-gpu"
NODE = f"{NODE_PREFIX}-0"
PROCESS = "demo-gpu-kubelet"
STATE_FILE = "demo-gpu.json"
GPU_MEMORY = "80Gi"
TAINT_KEY = "vllm-sleep.io/demo"
TAINT = f"{TAINT_KEY}=gpu:NoSchedule"


@dataclass
class DemoNode:
    name: str
    admin_url: str
    pid: int
    time_scale: float
    reused: bool = False

    @classmethod
    def load(cls, state_dir: Path) -> DemoNode | None:
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
            return cls(**{**data, "reused": True})
        except (OSError, ValueError, TypeError):
            return None

    def save(self, state_dir: Path) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "reused"}
        (state_dir / STATE_FILE).write_text(json.dumps(data, indent=2) + "\n")

    def healthy(self) -> bool:
        if not pid_alive(self.pid):
            return False
        try:
            return httpx.get(f"{self.admin_url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def kubelet_kubeconfig(cluster: Cluster) -> Path:
    """The local cluster's kubelet identity when it has one beside the admin kubeconfig."""
    own = cluster.kubeconfig.parent / "kubelet.kubeconfig"
    return own if own.is_file() else cluster.kubeconfig


def ensure(
    cluster: Cluster,
    state_dir: Path,
    time_scale: float,
    *,
    record: Callable[[int, str], None] = lambda _pid, _admin_url: None,
    timeout: float = 60.0,
) -> DemoNode:
    """Reuse the running demo node, or start its sim-kubelet and wait until it is Ready."""
    previous = DemoNode.load(state_dir)
    if previous and previous.healthy():
        taint(cluster)
        return previous
    logs = state_dir / "logs"
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "vllm_sleep.testing.kubelet",
        f"--kubeconfig={kubelet_kubeconfig(cluster)}",
        "--gpu-nodes=1",
        "--gpus-per-node=1",
        f"--gpu-memory={GPU_MEMORY}",
        f"--node-prefix={NODE_PREFIX}",
        f"--time-scale={time_scale:g}",
        f"--admin-port={port}",
    ]
    proc = spawn(PROCESS, argv, logs)
    node = DemoNode(NODE, f"http://127.0.0.1:{port}", proc.pid, time_scale)
    record(proc.pid, node.admin_url)  # before waiting, so `dev down` also stops one that hangs
    try:
        wait_process(PROCESS, proc, http_ok(f"{node.admin_url}/healthz"), logs, timeout)
    except ClusterError as e:
        raise DemoError(str(e)) from e
    taint(cluster)
    node.save(state_dir)
    return node


def taint(cluster: Cluster, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = cluster.kubectl("taint", "node", NODE, TAINT, "--overwrite", check=False)
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise DemoError(f"could not taint node {NODE}: {r.stderr.strip()}")
        time.sleep(0.5)


def remove(cluster: Cluster, node: DemoNode, state_dir: Path) -> None:
    """Stop the node's sim-kubelet and delete the Node (tests leave the cluster as found)."""
    from ..testing.cluster.processes import stop_pids
    from ..testing.kubelet.nodes import DRIVER

    stop_pids([node.pid])
    cluster.kubectl("delete", "node", node.name, "--ignore-not-found", "--wait=false", check=False)
    cluster.kubectl(
        "delete", "resourceslice", f"{node.name}-{DRIVER}", "--ignore-not-found", check=False
    )
    (state_dir / STATE_FILE).unlink(missing_ok=True)
