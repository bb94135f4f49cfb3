"""Swaps on one simulated GPU through the gateway: what a swap adds over the engines' own work.

    .venv/bin/python bench/swap_bench.py [--cycles 20] [--minutes 2] [--seed 7]
                                         [--time-scale 1] [--out bench/results/swap.json]

Starts its own local cluster (control plane + sim-kubelet, one node with one 80 GiB GPU), the
operator and the gateway as processes with their ServiceAccounts' RBAC, and a DRA GPUPool holding
that GPU. Engines run the simulator's default profile (vLLM 0.34), 16 GiB of weights, each taking
0.6 of the device: one awake at a time. Three phases, models deleted in between:

1. `swap`: models A and B, level 1. Each cycle sends one chat request (1 token) through the
   gateway to the sleeping one and times it, then the same request again awake (its own cost).
   The engines' own times come from each simulator's
   `vllm:sleep_mode_operation_duration_seconds` sums, read before and after the cycle (every
   sleep-mode operation of the cycle: the evicted one's sleep, the woken one's wake):

       added = (request -> response) - (evicted engine's ops) - (woken engine's ops) - (awake)

2. `tier`: the same with A at `sleep.level: 0` (KV-only: pause + release the KV cache, weights
   stay) and B at level 1: each model's wake next to the other's.
3. `trace`: four level-1 models, a seeded bursty trace for `--minutes`: bursts of requests for
   one model (Zipf-weighted choice, geometric burst size, short gaps inside a burst, exponential
   pauses between). Reports swaps (wakes) per minute and the share of requests that waited for
   a swap (their model's agent was not awake when the request was sent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wake_bench import (
    Cluster,
    Timeline,
    _has_uvloop,
    follow_agent,
    free_port,
    pct,
    sim_model_manifest,
    start_stack,
)

ROOT = Path(__file__).resolve().parents[1]
NS, POOL, NODE = "bench", "swap-gpu", "gpu-node-0"
PHASES = (
    "request_to_eviction",
    "agent_sleep",
    "asleep_to_waking",
    "agent_wake",
    "awake_to_response",
)
OP_SUM = re.compile(
    r'^vllm:sleep_mode_operation_duration_seconds_sum\{operation="([^"]+)"\} (\S+)$', re.M
)


def pool_manifest() -> dict[str, Any]:
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": POOL},
        "spec": {
            "sharing": "DRA",
            "deviceClassName": "sim-gpu.vllm-sleep.io",
            "deviceMemory": "80Gi",
            "nodeSelector": {"kubernetes.io/hostname": NODE},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
    }


def model_manifest(name: str, level: int, util: float, weights: str) -> dict[str, Any]:
    return sim_model_manifest(
        name,
        NS,
        env={"VLLM_SIM_PROFILE": "0.34", "VLLM_SIM_LOAD_SECONDS": "3"},  # not measured: short
        util=util,
        weights=weights,
        sleep={"level": level, "idleTimeout": "1h", "policy": "Auto"},
        placement={"pool": POOL},
    )


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Percentiles of every timed column, over the cycles where it was observed."""
    keys = [k for k in rows[0] if k not in ("target", "level")]
    out = {}
    for k in keys:
        xs = [r[k] for r in rows if isinstance(r.get(k), float)]
        if xs:
            out[k] = {
                "p50_ms": round(pct(xs, 50) * 1e3, 2),
                "p99_ms": round(pct(xs, 99) * 1e3, 2),
                "max_ms": round(max(xs) * 1e3, 2),
                "mean_ms": round(statistics.mean(xs) * 1e3, 2),
                "n": len(xs),
            }
    return out


def phases(
    models: Models, target: str, other: str, t0: float, total: float, awake_cost: float
) -> dict[str, float | None]:
    """Where the swap's time went, from the agents' reported states (wall clock, this host);
    None where the long-poll missed a state."""

    def first(name: str, states: tuple[str, ...]) -> float | None:
        return next(
            (s for st, s in models.agent[name].agent if st in states and s >= t0 - 0.01), None
        )

    evict = first(other, ("draining", "sleeping"))
    asleep = first(other, ("asleep",))
    waking = first(target, ("waking",))
    awake = first(target, ("awake",))

    def gap(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else b - a

    return {
        "request_to_eviction": gap(t0, evict),
        "agent_sleep": gap(evict, asleep),
        "asleep_to_waking": gap(asleep, waking),
        "agent_wake": gap(waking, awake),
        "awake_to_response": gap(awake, t0 + total - awake_cost),
    }


class Models:
    """The phase's models: their engines' metrics and their agents' states."""

    def __init__(self, cluster: Cluster, http: aiohttp.ClientSession, names: list[str]) -> None:
        self.cluster, self.http, self.names = cluster, http, names
        self.engine: dict[str, str] = {}
        self.agent: dict[str, Timeline] = {n: Timeline() for n in names}
        self.tasks: list[asyncio.Task[None]] = []

    async def follow(self, core: Any) -> None:
        from vllm_sleep.api import names as api_names
        from vllm_sleep.testing.kubelet.ips import private_twin

        for n in self.names:
            pods = await core.list_namespaced_pod(NS, label_selector=f"vllm-sleep.io/model={n}")
            ip = pods.items[0].status.pod_ip
            self.engine[n] = f"http://{private_twin(ip)}:{api_names.VLLM_PORT}"
            secret = await core.read_namespaced_secret(f"{n}-control-token", NS)
            token = base64.b64decode(secret.data["token"]).decode()
            url = f"http://{ip}:{api_names.CONTROL_PORT}"
            self.tasks.append(
                asyncio.create_task(follow_agent(self.http, url, token, self.agent[n]))
            )

    async def op_seconds(self, name: str) -> dict[str, float]:
        """The engine's own time in each sleep-mode operation so far (its metrics' sums)."""
        async with self.http.get(f"{self.engine[name]}/metrics") as r:
            text = await r.text()
        return {op: float(v) for op, v in OP_SUM.findall(text)}

    def state(self, name: str) -> str | None:
        tl = self.agent[name].agent
        return tl[-1][0] if tl else None

    def state_at(self, name: str, t: float) -> str | None:
        before = [st for st, since in self.agent[name].agent if since <= t]
        return before[-1] if before else None

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def until(pred: Any, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.05)


async def phase_of(objs: Any, name: str) -> str | None:
    obj = await objs.get_namespaced_custom_object(
        "vllm-sleep.io", "v1alpha1", NS, "modeldeployments", name
    )
    return (obj.get("status") or {}).get("phase")


def deploy(cluster: Cluster, manifests: list[dict[str, Any]]) -> None:
    for m in manifests:
        for _ in range(50):  # the ServiceAccount admission needs the namespace's default SA
            try:
                cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(m))
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)


async def remove_all(cluster: Cluster, core: Any) -> None:
    cluster.kubectl("delete", "mdep", "--all", "-n", NS, "--wait=false")
    for _ in range(1200):
        if not (await core.list_namespaced_pod(NS)).items:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("model pods gone")


async def chat(http: aiohttp.ClientSession, gateway: str, model: str) -> float:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    t = time.perf_counter()
    async with http.post(f"{gateway}/v1/chat/completions", json=body) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{model}: {r.status} {await r.text()}")
    return time.perf_counter() - t


async def swap_cycles(
    cluster: Cluster, api: Any, http: aiohttp.ClientSession, gateway: str, args: Any, levels: dict
) -> dict[str, Any]:
    """Alternate requests between two models that cannot both be awake."""
    from kubernetes_asyncio import client

    core, objs = client.CoreV1Api(api), client.CustomObjectsApi(api)
    names = list(levels)
    deploy(cluster, [model_manifest(n, lv, 0.6, args.weights) for n, lv in levels.items()])
    for n in names:
        await until(lambda n=n: _eq(phase_of(objs, n), "Asleep"), f"{n} pre-warmed")
    models = Models(cluster, http, names)
    await models.follow(core)
    rows: list[dict[str, Any]] = []
    missed = 0
    for i in range(args.cycles + 1):  # cycle 0 wakes the first with no eviction: not counted
        target, other = names[i % 2], names[(i + 1) % 2]

        async def settled(target: str = target, other: str = other, i: int = i) -> bool:
            want_other = "asleep" if i == 0 else "awake"
            return models.state(target) == "asleep" and models.state(other) == want_other

        await until(settled, f"cycle {i}: {target} asleep")
        await asyncio.sleep(0.3)  # let the operator's status writes settle
        before = {n: await models.op_seconds(n) for n in names}
        t0 = time.time()
        total = await chat(http, gateway, target)
        awake_cost = min([await chat(http, gateway, target) for _ in range(3)])
        after = {n: await models.op_seconds(n) for n in names}
        d = {n: {op: v - before[n].get(op, 0.0) for op, v in after[n].items()} for n in names}
        sleep_s, wake_s = sum(d[other].values()), sum(d[target].values())
        if i == 0:
            continue
        if not d[other].get("sleep"):  # no eviction seen: not a swap
            print(f"cycle {i:2d}: {other} did not sleep: {d}", flush=True)
            missed += 1
            continue
        row = {
            "target": target,
            "level": levels[target],
            "total": total,
            "engine_sleep": sleep_s,
            "engine_wake": wake_s,
            "engine_wake_op": d[target].get("wake", 0.0),
            "request_awake": awake_cost,
            "added": total - sleep_s - wake_s - awake_cost,
        }
        row.update(phases(models, target, other, t0, total, awake_cost))
        rows.append(row)
        print(
            f"cycle {i:2d}: {target} (level {levels[target]}) total {total * 1e3:7.1f} ms  "
            f"sleep {other} {sleep_s * 1e3:6.1f}  wake {wake_s * 1e3:6.1f}  "
            f"awake {awake_cost * 1e3:5.1f}  added {row['added'] * 1e3:6.1f}  phases "
            + " ".join("-" if row[k] is None else f"{row[k] * 1e3:.0f}" for k in PHASES),
            flush=True,
        )
    await models.stop()
    await remove_all(cluster, core)
    out: dict[str, Any] = {"summary": summarize(rows), "cycles": rows, "missed_cycles": missed}
    if len(set(levels.values())) > 1:
        out["by_level"] = {
            str(lv): summarize([r for r in rows if r["level"] == lv]) for lv in set(levels.values())
        }
    return out


async def trace(
    cluster: Cluster, api: Any, http: aiohttp.ClientSession, gateway: str, args: Any
) -> dict[str, Any]:
    from kubernetes_asyncio import client

    core, objs = client.CoreV1Api(api), client.CustomObjectsApi(api)
    names = [f"t{i}" for i in range(args.trace_models)]
    deploy(cluster, [model_manifest(n, 1, args.trace_util, args.weights) for n in names])
    for n in names:
        await until(lambda n=n: _eq(phase_of(objs, n), "Asleep"), f"{n} pre-warmed", 600)
    models = Models(cluster, http, names)
    await models.follow(core)
    await asyncio.sleep(1)
    rng = random.Random(args.seed)
    weights = [1 / (k + 1) for k in range(len(names))]  # Zipf: a few hot models
    results: list[dict[str, Any]] = []
    start = time.time()
    end = start + args.minutes * 60

    async def one(model: str) -> None:
        t0 = time.time()
        try:
            lat = await chat(http, gateway, model)
            ok = True
        except Exception as e:
            lat, ok = time.time() - t0, False
            print(f"request failed: {e}", flush=True)
        results.append({"model": model, "sent": t0, "latency": lat, "ok": ok})

    tasks: list[asyncio.Task[None]] = []
    while time.time() < end:
        model = rng.choices(names, weights)[0]
        burst = 1
        while rng.random() < 0.8 and burst < 30:  # geometric, mean 5
            burst += 1
        for _ in range(burst):
            tasks.append(asyncio.create_task(one(model)))
            await asyncio.sleep(rng.expovariate(1 / 0.05))
        await asyncio.sleep(rng.expovariate(1 / args.pause))
    await asyncio.gather(*tasks)
    elapsed = time.time() - start
    await asyncio.sleep(1)
    for r in results:
        r["waited"] = models.state_at(r["model"], r["sent"]) != "awake"

    def entered(state: str) -> int:
        """Times a model entered `state` during the trace (a report repeats its `since` while
        the state holds: other fields, such as the held count, changed)."""
        return sum(
            len({s for st, s in models.agent[n].agent if st == state and start <= s <= end})
            for n in names
        )

    end = start + elapsed
    wakes, sleeps = entered("awake"), entered("asleep")
    await models.stop()
    await remove_all(cluster, core)
    waited = [r["latency"] for r in results if r["waited"] and r["ok"]]
    direct = [r["latency"] for r in results if not r["waited"] and r["ok"]]

    def dist(xs: list[float]) -> dict[str, float]:
        if not xs:
            return {}
        return {"p50_ms": round(pct(xs, 50) * 1e3, 1), "p99_ms": round(pct(xs, 99) * 1e3, 1)}

    return {
        "minutes": round(elapsed / 60, 2),
        "requests": len(results),
        "failed": sum(not r["ok"] for r in results),
        "wakes": wakes,
        "sleeps": sleeps,
        "swaps_per_minute": round(wakes / (elapsed / 60), 1),
        "waited_share": round(sum(r["waited"] for r in results) / max(1, len(results)), 3),
        "latency_waited": dist(waited),
        "latency_awake": dist(direct),
    }


async def run(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    from kubernetes_asyncio import config

    api = await config.new_client_from_config(config_file=cluster.kubeconfig)
    gateway = f"http://127.0.0.1:{args.gateway_port}"
    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as http:
        if "swap" in args.phases:
            print("== swap: A and B, level 1", flush=True)
            out["swap"] = await swap_cycles(cluster, api, http, gateway, args, {"a": 1, "b": 1})
        if "tier" in args.phases:
            print("== tier: A level 0 (KV-only), B level 1", flush=True)
            out["tier"] = await swap_cycles(cluster, api, http, gateway, args, {"kv": 0, "w": 1})
        if "trace" in args.phases:
            print(f"== trace: {args.trace_models} models, {args.minutes} min", flush=True)
            out["trace"] = await trace(cluster, api, http, gateway, args)
    await api.close()
    return out


async def _eq(coro: Any, want: str) -> bool:
    return bool(await coro == want)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=20)
    p.add_argument("--minutes", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--trace-models", type=int, default=4)
    p.add_argument("--trace-util", type=float, default=0.6)
    p.add_argument("--pause", type=float, default=1.5, help="mean seconds between bursts")
    p.add_argument("--weights", default="16Gi")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--phases", default="swap,tier,trace")
    p.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "swap.json")
    args = p.parse_args()
    args.gateway_port = free_port()
    cluster = Cluster(args.time_scale)
    try:
        start_stack(cluster, args.gateway_port, NS)
        deploy(cluster, [pool_manifest()])
        result = asyncio.run(run(args, cluster))
    finally:
        if args.keep_logs:  # the operator's, gateway's and sim-kubelet's logs, for a stall
            shutil.copytree(cluster.dir, args.keep_logs, dirs_exist_ok=True, ignore=_not_logs)
        cluster.close()
    result["setup"] = {
        "command": "python bench/swap_bench.py " + " ".join(sys.argv[1:]),
        "cycles": args.cycles,
        "minutes": args.minutes,
        "seed": args.seed,
        "time_scale": args.time_scale,
        "weights": args.weights,
        "profile": "0.34",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "uvloop": _has_uvloop(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v.get("summary", v) for k, v in result.items()}, indent=1))
    return 0


def _not_logs(directory: str, entries: list[str]) -> list[str]:
    return [e for e in entries if not (e.endswith(".log") or Path(directory, e).is_dir())]


if __name__ == "__main__":
    sys.exit(main())
