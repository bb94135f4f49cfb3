"""Two gateway versions side by side: CPU per request and time to first chunk, alternating.

    .venv/bin/python bench/gateway_ab.py --base <git rev> [--rounds 4] [--requests 2000]
                                         [--concurrency 1,64] [--out bench/results/gateway_ab.json]

The base revision is checked out into a temporary `git worktree`; both gateways run as
processes on CPU 0 (the upstream and this load generator on the others), and each round runs
every concurrency on base then current in turn, so the host's drift falls on both alike. For a
change on the data path, this answers "did it cost anything" where the full overhead bench
(gateway_bench.py) only compares against nginx.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import gateway_bench as gb

REPO = Path(__file__).resolve().parent.parent


def spawn_gateway(tree: Path, upstream: str, cpus: set[int]) -> tuple[subprocess.Popen[str], str]:
    port = gb.free_port(gb.HOSTS["gateway"])
    argv = ["--role", "gateway", "--port", str(port), "--upstream", upstream, "--loop", "uvloop"]
    proc = gb.spawn(argv, cpus, tree)
    return proc, f"http://{gb.HOSTS['gateway']}:{port}/v1/chat/completions"


async def run(args: argparse.Namespace, trees: dict[str, Path]) -> dict[str, Any]:
    ncpu = len(os.sched_getaffinity(0))
    proxy, rest = ({0}, set(range(1, ncpu))) if ncpu > 1 else ({0}, {0})
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, rest)
    procs: list[subprocess.Popen[Any]] = []
    try:
        up_port = gb.free_port(gb.HOSTS["upstream"])
        procs.append(
            gb.spawn(["--role", "upstream", "--port", str(up_port), "--chunks", "8"], rest)
        )
        upstream = f"http://{gb.HOSTS['upstream']}:{up_port}"
        gateways = {}
        for name, tree in trees.items():
            proc, url = spawn_gateway(tree, upstream, proxy)
            procs.append(proc)
            gateways[name] = (proc.pid, url)
        rows: dict[str, dict[str, list[dict[str, float]]]] = {
            str(c): {n: [] for n in gateways} for c in args.concurrency
        }
        for rnd in range(args.rounds):
            for c in args.concurrency:
                for name, (pid, url) in gateways.items():
                    if rnd == 0:
                        await gb.run_cell(url, c, 0, 200)  # warm-up, untimed
                    before = gb.cpu_seconds(pid)
                    cell = await gb.run_cell(url, c, args.requests, 0)
                    cpu = (gb.cpu_seconds(pid) - before) / args.requests * 1e6
                    rows[str(c)][name].append(
                        {"cpu_us": round(cpu, 1), "ttfb_p50_ms": round(gb.pct(cell["ttfb"], 50), 3)}
                    )
                    print(f"round {rnd} c={c:<3} {name:<8} {rows[str(c)][name][-1]}", flush=True)
        return rows
    finally:
        os.sched_setaffinity(0, mine)
        for proc in procs:
            proc.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", required=True, help="git revision to compare the work tree with")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gateway_ab.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base), args.base],
            check=True,
        )
        try:
            rows = asyncio.run(run(args, {"base": base, "current": REPO}))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)])
    summary = {
        c: {
            name: {
                "cpu_us_median": sorted(r["cpu_us"] for r in runs)[len(runs) // 2],
                "ttfb_p50_ms_median": sorted(r["ttfb_p50_ms"] for r in runs)[len(runs) // 2],
            }
            for name, runs in by_name.items()
        }
        for c, by_name in rows.items()
    }
    for c, by_name in summary.items():
        b, n = by_name["base"], by_name["current"]
        print(
            f"c={c:<3} CPU µs/request base {b['cpu_us_median']:.0f} current "
            f"{n['cpu_us_median']:.0f} ({n['cpu_us_median'] / b['cpu_us_median']:.2f}x); "
            f"TTFB p50 base {b['ttfb_p50_ms_median']:.3f} current {n['ttfb_p50_ms_median']:.3f} ms"
        )
    result = {
        "benchmark": "gateway A/B (SSE, loopback, gateways pinned to CPU 0)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "params": {**vars(args)},
        "rounds": rows,
        "summary": summary,
    }
    gb.write_result(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
