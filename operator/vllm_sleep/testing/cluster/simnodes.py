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
    shards: int = 1,
) -> None:
    """`shards` > 1: that many sim-kubelet processes, each kubelet for every Kth node (a big
    fleet's engines and agents spread over processes, as over real nodes). The first one's
    admin API is `state.kubelet_admin_url`; each answers for its own nodes and pods."""
    for shard in range(shards):
        _start_one(state, gpu_nodes, gpus_per_node, gpu_memory, time_scale, timeout, shard, shards)


def _start_one(
    state: ClusterState,
    gpu_nodes: int,
    gpus_per_node: int,
    gpu_memory: str,
    time_scale: float,
    timeout: float,
    shard: int,
    shards: int,
) -> None:
    name = "sim-kubelet" if shard == 0 else f"sim-kubelet-{shard}"
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
        f"--pod-dir={state.state_dir}/pods",
    ]
    if shards > 1:
        argv.append(f"--shard={shard}/{shards}")
    proc = spawn(name, argv, state.logs)
    state.pids[name] = proc.pid
    admin = f"http://127.0.0.1:{port}"
    if shard == 0:
        state.kubelet_admin_url = admin
    state.launches[name] = {
        "argv": argv,
        "probe": f"{admin}/healthz",
        "token": None,
        "expect": None,
    }
    state.save()
    try:
        wait_ready(name, proc, http_ok(f"{admin}/healthz"), state.logs, timeout)
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
    kubelet_shards: int = 1,
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
        shards=kubelet_shards,
    )
    return state
