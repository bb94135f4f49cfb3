"""Scheduler plan computation at scale: 1,000 models on 200 nodes (800 devices).

    .venv/bin/python bench/plan_bench.py [--models 1000] [--nodes 200] [--devices-per-node 4]
                                         [--wakes 2000] [--out bench/results/plan.json]

Pure CPU, one process, no cluster: the scheduler is a pure function of a pool snapshot.

- Full placement: every model pending on empty devices. Start-up is serialised per device, so
  placement runs in passes; between passes each started engine is taken as loaded and slept once
  (its pre-warm) with a measured residual, as the operator would observe it. Timed per pass and
  in all.
- One more model into the full pool: the steady-state cost of placing a new replica.
- The same on a quarter of the nodes (five models per device), where most wakes evict.
- Wake plans: on the placed pool with about a third of the engines awake, `plan_wake` for
  random sleeping replicas, timed on a fresh snapshot (what the operator pays: building the
  `Pool` from observations, its indexes, then the plan) and on a warm one (the plan alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from vllm_sleep.scheduler import (
    Device,
    Engine,
    EngineState,
    Node,
    Plan,
    Pool,
    place,
    plan_wake,
)

ROOT = Path(__file__).resolve().parents[1]
G = 1 << 30
DEVICE = 80 * G
SHARES = (0.2, 0.3, 0.45, 0.45, 0.6, 0.9)  # gpuMemoryUtilization mix


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


def summary(xs: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in xs]
    return {
        "n": len(ms),
        "mean_ms": round(statistics.fmean(ms), 3),
        "p50_ms": round(pct(ms, 50), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def empty_pool(models: int, nodes: int, per_node: int, rnd: random.Random, slots: int = 4) -> Pool:
    node_list = tuple(Node(f"node-{n:03d}", 64 * G) for n in range(nodes))
    devices = tuple(
        Device(f"node-{n:03d}/gpu{d}", f"node-{n:03d}", DEVICE)
        for n in range(nodes)
        for d in range(per_node)
    )
    engines = []
    for i in range(models):
        share = rnd.choice(SHARES)
        engines.append(
            Engine(
                replica=f"ns/model-{i:04d}-0",
                model=f"ns/model-{i:04d}",
                share=int(share * DEVICE),
                weights=int(share * 40 * G),
                priority=rnd.choice((0, 0, 0, 10, 100)),
                min_awake=rnd.choice((0.0, 60.0)),
            )
        )
    return Pool(devices, node_list, tuple(engines), slots_per_device=slots)


def settle(pool: Pool, plans: tuple[Plan, ...], now: float) -> Pool:
    """Each planned replica loaded and slept once (pre-warm), victims asleep."""
    changed = []
    for plan in plans:
        for step in plan.steps[:-1]:
            e = pool.engine_by_replica[step.replica]
            changed.append(replace(e, state=EngineState.ASLEEP, sleep_level=2))
        e = pool.engine_by_replica[plan.replica]
        changed.append(
            replace(
                e,
                device=plan.device,
                state=EngineState.ASLEEP,
                sleep_level=1,
                residual=G + e.weights // 50,
                woken_at=now,
            )
        )
    return pool.replace(*changed)


def full_placement(pool: Pool, now: float) -> tuple[Pool, dict[str, Any]]:
    passes: list[float] = []
    placed_per_pass: list[int] = []
    while True:
        t0 = time.perf_counter()
        result = place(pool, now)
        passes.append(time.perf_counter() - t0)
        placed_per_pass.append(len(result.plans))
        if not result.plans:
            break
        pool = settle(pool, result.plans, now)
        now += 60
    unplaced = sum(1 for e in pool.engines if e.device is None)
    return pool, {
        "passes": len(passes) - 1,
        "placed_per_pass": placed_per_pass[:-1],
        "unplaced": unplaced,
        "first_pass_ms": round(passes[0] * 1000, 1),
        "all_passes_ms": round(sum(passes) * 1000, 1),
        "per_pass": summary(passes),
    }


def wake_some(pool: Pool, rnd: random.Random, now: float) -> Pool:
    """About a third awake, as traffic would leave it (one device at a time, fitting)."""
    p = pool
    for e in rnd.sample(list(pool.engines), len(pool.engines) // 3):
        plan = plan_wake(p, e.replica, now)
        if isinstance(plan, Plan) and len(plan.steps) == 1:
            awake = replace(
                p.engine_by_replica[e.replica],
                state=EngineState.AWAKE,
                sleep_level=None,
                woken_at=now - rnd.uniform(0, 600),
                last_activity=now - rnd.uniform(0, 600),
            )
            p = p.replace(awake)
    return p


def wake_plans(pool: Pool, wakes: int, rnd: random.Random, now: float) -> dict[str, Any]:
    asleep = [e.replica for e in pool.engines if e.state == EngineState.ASLEEP]
    targets = [rnd.choice(asleep) for _ in range(wakes)]
    fresh: list[float] = []
    warm: list[float] = []
    evictions = 0
    refusals = 0
    for r in targets:
        t0 = time.perf_counter()
        snapshot = Pool(
            pool.devices, pool.nodes, pool.engines, slots_per_device=pool.slots_per_device
        )
        plan_wake(snapshot, r, now)
        fresh.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        result = plan_wake(pool, r, now)
        warm.append(time.perf_counter() - t0)
        if isinstance(result, Plan):
            evictions += len(result.evictions)
        else:
            refusals += 1
    return {
        "asleep": len(asleep),
        "awake": sum(1 for e in pool.engines if e.state == EngineState.AWAKE),
        "fresh_snapshot": summary(fresh),
        "warm_snapshot": summary(warm),
        "evictions_per_plan": round(evictions / wakes, 3),
        "refusals": refusals,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--nodes", type=int, default=200)
    ap.add_argument("--devices-per-node", type=int, default=4)
    ap.add_argument("--wakes", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/plan.json")
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    now = 1_800_000_000.0

    pool = empty_pool(args.models, args.nodes, args.devices_per_node, rnd)
    pool, placement = full_placement(pool, now)

    extra = Engine("ns/one-more-0", "ns/one-more", int(0.45 * DEVICE), weights=18 * G)
    grown = replace(pool, engines=(*pool.engines, extra))
    one_more: list[float] = []
    for _ in range(20):
        t0 = time.perf_counter()
        place(grown, now)
        one_more.append(time.perf_counter() - t0)

    pool = wake_some(pool, rnd, now)
    wakes = wake_plans(pool, args.wakes, rnd, now)

    # The same models on a quarter of the nodes: five per device, so most wakes evict.
    dense = empty_pool(args.models, args.nodes // 4, args.devices_per_node, rnd, slots=5)
    dense, dense_placement = full_placement(dense, now)
    dense = wake_some(dense, rnd, now)
    dense_wakes = wake_plans(dense, args.wakes, rnd, now)

    results = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "pool": {
            "models": args.models,
            "nodes": args.nodes,
            "devices": args.nodes * args.devices_per_node,
            "shares": list(SHARES),
        },
        "full_placement": placement,
        "place_one_more": summary(one_more),
        "wake_plan": wakes,
        "dense": {
            "nodes": args.nodes // 4,
            "devices": args.nodes // 4 * args.devices_per_node,
            "full_placement": dense_placement,
            "wake_plan": dense_wakes,
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
