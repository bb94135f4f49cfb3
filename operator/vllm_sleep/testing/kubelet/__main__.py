"""`python -m vllm_sleep.testing.kubelet`: run the sim-kubelet (started by `vllm-sleep dev up`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

from aiohttp import web
from kubernetes_asyncio import client, config

from ...controller.kube import lean_client
from ...logs import configure
from ...serve import stop_on_signals
from ..sim.units import parse_bytes
from .kubelet import SimKubelet
from .nodes import NodeSpec


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sim-kubelet", description=__doc__)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--gpu-nodes", type=int, default=2)
    p.add_argument("--gpus-per-node", type=int, default=2)
    p.add_argument("--gpu-memory", default="80Gi")
    p.add_argument("--node-memory", default="1Ti", help="host memory per node (pinned backups)")
    p.add_argument("--node-prefix", default="gpu-node")
    p.add_argument("--time-scale", type=float, default=0.05)
    p.add_argument("--admin-port", type=int, required=True)
    p.add_argument(
        "--pod-dir",
        type=Path,
        help="where pods' emptyDir and secret volumes live (kubelet's /var/lib/kubelet/pods); "
        "under the cluster's state directory, so that stopping the cluster removes them even "
        "when the pods were never stopped one by one (default: the system's temp directory)",
    )
    p.add_argument(
        "--shard",
        default="0/1",
        help="I/K: this process is kubelet for the nodes whose index is I modulo K (a big "
        "simulated fleet runs in K processes, as real nodes each run their own kubelet)",
    )
    return p


def shard_of(text: str) -> tuple[int, int]:
    """`I/K` -> (I, K), with 0 <= I < K."""
    index, _, count = text.partition("/")
    i, k = int(index), int(count or "1")
    if not 0 <= i < k:
        raise ValueError(f"--shard {text}: want I/K with 0 <= I < K")
    return i, k


async def run(args: argparse.Namespace) -> None:
    await config.load_kube_config(config_file=args.kubeconfig)
    shard, shards = shard_of(args.shard)
    nodes = [
        NodeSpec(
            f"{args.node_prefix}-{i}",
            args.gpus_per_node,
            parse_bytes(args.gpu_memory),
            memory=args.node_memory,
        )
        for i in range(args.gpu_nodes)
        if i % shards == shard
    ]
    configuration = client.Configuration.get_default_copy()
    # A pod watch per node holds a connection each (`SimKubelet._watch`); the status writes,
    # reads and heartbeats need room beside them.
    configuration.connection_pool_maxsize = len(nodes) + 64
    api = lean_client(client.ApiClient(configuration))
    if args.pod_dir is not None:
        args.pod_dir.mkdir(parents=True, exist_ok=True)
    kubelet = SimKubelet(
        api, nodes, args.time_scale, ip_region=(shard, shards), pod_dir=args.pod_dir
    )
    runner = web.AppRunner(kubelet.admin_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.admin_port).start()
    task = asyncio.create_task(kubelet.run())
    with stop_on_signals() as stop:
        await asyncio.wait(
            [task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED
        )
        if task.done() and task.exception():
            raise task.exception()  # type: ignore[misc]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kubelet.stop()
        await runner.cleanup()
        await api.close()


# A file path: the process runs under cProfile, and each SIGUSR1 dumps the profile so far to
# `<path>.<n>` and starts a new one (the scale bench sets it to see where a big fleet's CPU goes).
PROFILE_ENV = "VLLM_SLEEP_SIM_KUBELET_PROFILE"


def main(argv: list[str] | None = None) -> int:
    configure()
    args = parser().parse_args(argv)
    out = os.environ.get(PROFILE_ENV)
    if out and args.shard != "0/1":
        out += ".shard" + args.shard.replace("/", "of")
    if not out:
        asyncio.run(run(args))
        return 0
    import cProfile

    state = {"prof": cProfile.Profile(), "n": 0}

    def dump(*_: object) -> None:
        prof = state["prof"]
        assert isinstance(prof, cProfile.Profile)
        prof.disable()
        prof.dump_stats(f"{out}.{state['n']}")
        state["n"] = int(str(state["n"])) + 1
        state["prof"] = fresh = cProfile.Profile()
        fresh.enable()

    signal.signal(signal.SIGUSR1, dump)
    first = state["prof"]
    assert isinstance(first, cProfile.Profile)
    first.enable()
    try:
        asyncio.run(run(args))
    finally:
        dump()
    return 0


if __name__ == "__main__":
    sys.exit(main())
