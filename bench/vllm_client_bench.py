"""The agent's vLLM client: calls per CPU-second, h1 (production) vs httpx (the previous client).

    .venv/bin/python bench/vllm_client_bench.py [--rounds 2000] [--clients 50] [--out FILE]

One simulated engine (`vllm-sleep sim`, time scale 0: transitions answer at once) runs in a
process of its own, so the CPU counted is the client's alone (this process's user + system
time). Both variants run in the same process, one after the other, twice each (ABAB), against
the same engine:

- `h1`: `VLLMClient(url)`, keep-alive HTTP/1.1 over `vllm_sleep.h1`'s pool.
- `httpx`: `VLLMClient(url, http=httpx.AsyncClient(trust_env=False, verify=False))`, the
  client as it was before (an httpx client with the same timeouts and parameters).

Workloads:
- `cycle`: one client, the agent's mix for a sleep and a wake: /health, /is_sleeping,
  /sleep?level=1&mode=wait, /is_sleeping, /wake_up?tags=weights&tags=kv_cache, /is_sleeping
  (six calls per round);
- `polls`: `--clients` clients at once (agents of one process), each /health then
  /is_sleeping per round.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from vllm_sleep.vllm import VLLMClient

Factory = Callable[[str], VLLMClient]


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def h1_client(url: str) -> VLLMClient:
    return VLLMClient(url)


def httpx_client(url: str) -> VLLMClient:
    return VLLMClient(url, http=httpx.AsyncClient(trust_env=False, verify=False))


async def close(c: VLLMClient) -> None:
    await c.aclose()
    transport = getattr(c, "_transport", None)
    http = getattr(transport, "_http", None)
    if http is not None:
        await http.aclose()


async def cycle(c: VLLMClient, rounds: int) -> int:
    for _ in range(rounds):
        await c.health()
        await c.is_sleeping()
        await c.sleep(1, mode="wait")
        await c.is_sleeping()
        await c.wake_up(["weights", "kv_cache"])
        await c.is_sleeping()
    return rounds * 6


async def polls(c: VLLMClient, rounds: int) -> int:
    for _ in range(rounds):
        await c.health()
        await c.is_sleeping()
    return rounds * 2


async def measure(
    factory: Factory, url: str, clients: int, rounds: int, work: Callable[..., Awaitable[int]]
) -> dict[str, float]:
    cs = [factory(url) for _ in range(clients)]
    for c in cs:  # warm: versions cached, connections open
        await c.version()
        await c.health()
    c0, w0 = cpu(), time.perf_counter()
    calls = sum(await asyncio.gather(*(work(c, rounds) for c in cs)))
    c1, w1 = cpu(), time.perf_counter()
    for c in cs:
        await close(c)
    return {
        "calls": calls,
        "cpu_s": round(c1 - c0, 3),
        "wall_s": round(w1 - w0, 3),
        "calls_per_cpu_s": round(calls / (c1 - c0)),
        "us_cpu_per_call": round(1e6 * (c1 - c0) / calls, 1),
    }


async def run(args: argparse.Namespace, url: str) -> dict[str, object]:
    variants: dict[str, Factory] = {"h1": h1_client, "httpx": httpx_client}
    workloads: list[tuple[str, int, int, Callable[..., Awaitable[int]]]] = [
        ("cycle", 1, args.rounds, cycle),
        ("polls", args.clients, max(1, args.rounds * 3 // args.clients), polls),
    ]
    out: dict[str, object] = {}
    for name, clients, rounds, work in workloads:
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        for _ in range(2):  # ABAB: drift (other load on the host) hits both alike
            for v, factory in variants.items():
                runs[v].append(await measure(factory, url, clients, rounds, work))
        best = {v: min(r, key=lambda m: m["cpu_s"]) for v, r in runs.items()}
        out[name] = {
            "clients": clients,
            "runs": runs,
            "best": best,
            "h1_over_httpx_calls_per_cpu_s": round(
                best["h1"]["calls_per_cpu_s"] / best["httpx"]["calls_per_cpu_s"], 2
            ),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2000)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    port = free_port()
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1"}
    argv = ["bench", "--host", "127.0.0.1", "--port", str(port), "--enable-sleep-mode"]
    sim = subprocess.Popen(
        [sys.executable, "-m", "vllm_sleep.cli", "sim", *argv, "--time-scale", "0"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", trust_env=False, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or sim.poll() is not None:
                raise SystemExit("the simulator did not start")
            time.sleep(0.2)
        result = {
            "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
            **asyncio.run(run(args, url)),
            "loadavg_after": Path("/proc/loadavg").read_text().split()[:3],
        }
    finally:
        sim.terminate()
        sim.wait(10)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
