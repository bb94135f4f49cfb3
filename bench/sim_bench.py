"""Simulator benchmark: token throughput, per-request overhead, and RSS of 1000 idle engines.

    .venv/bin/python bench/sim_bench.py [--engines 1000] [--out bench/results/sim.json]
    .venv/bin/python bench/sim_bench.py --timing-curve [--png docs/img/sim-timing.png]

`--timing-curve` prints the timing model next to the H100 measurements (the table in
docs/simulator.md) and draws the curve with matplotlib; it runs no engine.

Timings of the model are set to zero (time scale 0), so the numbers measure the simulator
itself: HTTP, JSON/SSE encoding and the scheduler. The RSS run happens in a fresh child process
so the throughput runs do not inflate it. Engines bind 127.77.x.y:8001, like pods on one node.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from vllm_sleep.testing.sim import EngineHost, GiB, SimConfig, default_timings

DEV = {"VLLM_SERVER_DEV_MODE": "1"}


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def throughput(
    concurrency: int, requests: int, max_tokens: int, stream: bool
) -> dict[str, float]:
    host = EngineHost(time_scale=0.0)
    cfg = SimConfig.from_cli(
        ["bench", "--host", "127.0.0.1", "--port", "0", "--max-num-seqs", "1024"], DEV
    )
    engine = await host.start_engine(cfg)
    await engine.wait_loaded()
    body = {"model": "bench", "prompt": "hello", "max_tokens": max_tokens, "stream": stream}
    sem = asyncio.Semaphore(concurrency)
    tokens = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:

        async def one() -> None:
            nonlocal tokens
            async with sem, s.post(f"{engine.url}/v1/completions", json=body) as r:
                if stream:
                    async for line in r.content:
                        if line.startswith(b"data: {") and b'"finish_reason":null' in line:
                            tokens += 1
                else:
                    tokens += (await r.json())["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(requests)))
        elapsed = time.perf_counter() - start
    await host.stop_all()
    return {
        "concurrency": concurrency,
        "requests": requests,
        "max_tokens": max_tokens,
        "stream": stream,
        "seconds": round(elapsed, 3),
        "tokens_per_second": round(tokens / elapsed),
        "requests_per_second": round(requests / elapsed, 1),
    }


async def request_overhead(n: int) -> dict[str, float]:
    """Sequential 1-token requests: the latency the simulator adds to each call."""
    host = EngineHost(time_scale=0.0)
    engine = await host.start_engine(
        SimConfig.from_cli(["bench", "--host", "127.0.0.1", "--port", "0"], DEV)
    )
    await engine.wait_loaded()
    lat: list[float] = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t = time.perf_counter()
            async with s.post(
                f"{engine.url}/v1/completions",
                json={"model": "bench", "prompt": "x", "max_tokens": 1},
            ) as r:
                await r.read()
            lat.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(n):
            async with s.get(f"{engine.url}/is_sleeping") as r:
                await r.read()
        dev_call = (time.perf_counter() - t) / n
    await host.stop_all()
    lat.sort()
    return {
        "requests": n,
        "p50_ms": round(lat[n // 2] * 1e3, 3),
        "p99_ms": round(lat[int(n * 0.99)] * 1e3, 3),
        "is_sleeping_mean_ms": round(dev_call * 1e3, 3),
    }


async def idle_engines(count: int) -> dict[str, float]:
    before = rss_mib()
    host = EngineHost(time_scale=0.0)
    t = time.perf_counter()
    engines = []
    for i in range(count):
        ip = f"127.77.{i // 250}.{i % 250 + 1}"
        cfg = SimConfig.from_cli(
            [f"m{i}", "--host", ip, "--port", "8001", "--gpu-memory-utilization", "0.1"], DEV
        )
        engines.append(
            await host.start_engine(cfg, device=host.device(f"node-{i // 8}/gpu-{i % 8}"))
        )
    await asyncio.gather(*(e.wait_loaded() for e in engines))
    started = time.perf_counter() - t
    # Every engine answers: one /health each.
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100, force_close=True)
    ) as s:
        ok = 0
        for e in engines:
            async with s.get(f"{e.url}/health") as r:
                ok += r.status == 200
    after = rss_mib()
    await host.stop_all()
    return {
        "engines": count,
        "healthy": ok,
        "rss_before_mib": round(before, 1),
        "rss_after_mib": round(after, 1),
        "rss_per_engine_kib": round((after - before) * 1024 / count, 1),
        "start_seconds": round(started, 2),
    }


# H100 80GB HBM3, vLLM's cuMem sleep path, 300 allocations, median of 3 (docs/vllm.md "Measured
# on H100"): weights GiB -> (wake s, sleep s, first-sleep pinning s on 0.34)
MEASURED = {
    1: (0.028, 0.027, 0.30),
    2: (0.053, 0.049, 0.56),
    4: (0.094, 0.093, 1.13),
    8: (0.179, 0.175, 2.31),
    16: (0.342, 0.336, 4.17),
    32: (0.679, 0.671, 8.47),
    64: (1.33, 1.30, 17.0),
}


def timing_table() -> str:
    """Markdown: the model (engine work, no call overhead, no KV cache) next to the measurements."""
    rows = [
        "| weights | wake: model / measured | later sleep: model / measured "
        "| first-sleep pinning 0.34: model / measured | older versions' pinning (model) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for gib, (wake, sleep, pin) in MEASURED.items():
        t = default_timings(gib * GiB, profile="0.34")
        old = default_timings(gib * GiB, profile="0.33")
        c = t.call_overhead
        rows.append(
            f"| {gib} GiB | {_s(t.wake - c)} / {_s(wake)} | {_s(t.sleep - c)} / {_s(sleep)} "
            f"| {_s(t.first_sleep - t.sleep)} / {_s(pin)} | {_s(old.first_sleep - old.sleep)} |"
        )
    return "\n".join(rows)


def _s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def timing_png(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [0.5 * i for i in range(1, 161)]  # 0.5 .. 80 GiB
    model = [default_timings(int(g * GiB), profile="0.34") for g in sizes]
    old = [default_timings(int(g * GiB), profile="0.33") for g in sizes]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    ax1.plot(sizes, [t.wake - t.call_overhead for t in model], label="wake (model)")
    ax1.plot(sizes, [t.sleep - t.call_overhead for t in model], label="later sleep (model)")
    ax1.plot(sizes, [(k := default_timings(int(g * GiB), int(40 * GiB))).remap - k.call_overhead for g in sizes],
             label="KV-only wake, 40 GiB KV (model)")  # fmt: skip
    ax1.scatter(list(MEASURED), [m[0] for m in MEASURED.values()], marker="o", label="wake (H100)")
    ax1.scatter(list(MEASURED), [m[1] for m in MEASURED.values()], marker="x", label="sleep (H100)")
    ax1.set(xlabel="weights (GiB)", ylabel="seconds", title="wake and later sleeps")
    ax2.plot(sizes, [t.first_sleep - t.sleep for t in model], label="0.34 pinning (model)")
    ax2.plot(sizes, [t.first_sleep - t.sleep for t in old], label="<=0.33 pinning (model)")
    ax2.scatter(list(MEASURED), [m[2] for m in MEASURED.values()], marker="o", label="0.34 pinning (H100)")  # fmt: skip
    ax2.set(xlabel="weights (GiB)", ylabel="seconds", title="first sleep: extra pinning cost")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--engines", type=int, default=1000)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "sim.json"))
    p.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--timing-curve", action="store_true", help="the timing model vs the H100")
    p.add_argument("--png", default=str(Path(__file__).parents[1] / "docs/img/sim-timing.png"))
    a = p.parse_args()
    if a.timing_curve:
        print(timing_table())
        timing_png(Path(a.png))
        print(f"wrote {a.png}")
        return 0
    if a.rss_child:
        print(json.dumps(asyncio.run(idle_engines(a.engines))))
        return 0
    child = subprocess.run(
        [sys.executable, __file__, "--rss-child", "--engines", str(a.engines)],
        capture_output=True,
        text=True,
        check=True,
    )
    results = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
        "throughput": [
            asyncio.run(throughput(64, 256, 64, stream=True)),
            asyncio.run(throughput(64, 256, 64, stream=False)),
        ],
        "request_overhead": asyncio.run(request_overhead(500)),
        "idle_engines": json.loads(child.stdout.strip().splitlines()[-1]),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
