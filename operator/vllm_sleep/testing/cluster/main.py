"""`vllm-sleep dev build|up|down|status|env`: the local control plane from the command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from . import build, controlplane
from .processes import ClusterError

DEFAULT_STATE = Path(os.environ.get("VLLM_SLEEP_DEV_DIR", "/dev/shm/vllm-sleep-dev"))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-sleep dev", description=__doc__)
    p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="cluster state (tmpfs)")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("build", help="build (or find cached) Kubernetes, etcd and helm binaries")
    up = sub.add_parser("up", help="start the control plane and simulated GPU nodes")
    up.add_argument("--gpu-nodes", type=int, default=2)
    up.add_argument("--gpus-per-node", type=int, default=2)
    up.add_argument("--gpu-memory", default="80Gi")
    up.add_argument("--time-scale", type=float, default=0.05, help="simulated vLLM time scale")
    up.add_argument("--no-kubelet", action="store_true", help="control plane only")
    sub.add_parser("down", help="stop every process of the cluster")
    sub.add_parser(
        "status",
        help="show each process (pid, running, URL), the apiserver URL and the kubeconfig path",
    )
    sub.add_parser("env", help="print `export KUBECONFIG=...`")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    state_dir: Path = args.state_dir
    try:
        if args.cmd == "build":
            return build.main()
        if args.cmd == "up":
            return _up(state_dir, args)
        if args.cmd == "down":
            return _down(state_dir)
        if args.cmd == "status":
            return _status(state_dir)
        if args.cmd == "env":
            state = controlplane.ClusterState.load(state_dir)
            if state is None:
                print(f"no cluster in {state_dir}; run `vllm-sleep dev up`", file=sys.stderr)
                return 1
            print(f"export KUBECONFIG={state.kubeconfig}")
            return 0
    except (ClusterError, build.BuildError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 2


def _up(state_dir: Path, args: argparse.Namespace) -> int:
    existing = controlplane.ClusterState.load(state_dir)
    if existing and any(existing.alive().values()):
        print(f"a cluster is already running from {state_dir} (`vllm-sleep dev status`);")
        print(f"export KUBECONFIG={existing.kubeconfig}")
        return 0
    bins = build.ensure_all(lambda s: print(s, flush=True))
    if args.no_kubelet:
        state = controlplane.start(state_dir, bins)
    else:
        from .simnodes import start_simulated

        state = start_simulated(
            state_dir,
            bins,
            gpu_nodes=args.gpu_nodes,
            gpus_per_node=args.gpus_per_node,
            gpu_memory=args.gpu_memory,
            time_scale=args.time_scale,
        )
    print(f"cluster up: {state.api_url}  (state {state_dir})")
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0


def _load(state_dir: Path) -> controlplane.ClusterState | None:
    """The cluster `up` left in `state_dir`; None (said on stdout) if there is none."""
    state = controlplane.ClusterState.load(state_dir)
    if state is None:
        print(f"no cluster in {state_dir}")
    return state


def _down(state_dir: Path) -> int:
    state = _load(state_dir)
    if state is None:
        return 0
    controlplane.stop(state)
    left = [n for n, alive in state.alive().items() if alive]
    if left:
        print(f"error: still running: {left}", file=sys.stderr)
        return 1
    import shutil

    shutil.rmtree(state_dir, ignore_errors=True)
    print("cluster down")
    return 0


def endpoint(state: controlplane.ClusterState, name: str) -> str:
    """Where process `name` answers: the URL recorded for a process started beside the cluster,
    else the scheme and address of the probe the control plane waits on."""
    if name in state.endpoints:
        return state.endpoints[name]
    probe = state.launches.get(name, {}).get("probe")
    if not probe:
        return ""
    url = urlsplit(probe)
    return f"{url.scheme}://{url.netloc}"


def _status(state_dir: Path) -> int:
    from rich.console import Console
    from rich.table import Table

    state = _load(state_dir)
    if state is None:
        return 1
    table = Table(title=f"vllm-sleep dev cluster ({state_dir})")
    for col in ("process", "pid", "running", "endpoint"):
        table.add_column(col, no_wrap=True)
    alive = state.alive()
    for name, pid in state.pids.items():
        running = "yes" if alive[name] else "[red]no[/red]"
        table.add_row(name, str(pid), running, endpoint(state, name))
    Console().print(table)
    print(f"apiserver:   {state.api_url}")
    print(f"kubeconfig:  {state.kubeconfig}")
    if state.kubelet_admin_url:
        print(f"sim-kubelet: {state.kubelet_admin_url} (admin API: /nodes, /pods, /violations)")
    print(f"export KUBECONFIG={state.kubeconfig}")
    return 0 if all(alive.values()) else 1
