"""Soak: a bursty multi-model arrival pattern through the gateway on a shared two-GPU pool.

    .venv/bin/python bench/soak_bench.py [--minutes 30] [--models 6] [--rate 2] [--seed 7]
                                         [--out bench/results/soak.json]
                                         [--png bench/results/soak.png] [--keep-logs DIR]
    .venv/bin/python bench/soak_bench.py --plot bench/results/soak.json [--png ...]

Starts the swap bench's local cluster (control plane + sim-kubelet, one node with **two** 80 GiB
GPUs, time scale 1), the operator and the gateway as processes with their ServiceAccounts'
RBAC, one DRA GPUPool holding both GPUs. `--models` level-1 models (simulator profile 0.34, 16
GiB of weights) alternate between 0.4 and 0.7 of a device, so a device holds two small ones
awake, or one large: every model cannot be awake at once and requests swap models in and out.

The arrivals come from `vllm_sleep.testing.arrivals` (Zipf popularity, Gamma inter-arrival gaps
per model, a compressed diurnal swing; its docstring cites the traces it is shaped after),
replayed open loop by `vllm_sleep.testing.replay`, half of them streamed. Per request: sent,
time to first token, status. A request *found its model awake* when the model's agent was
`awake` when it was sent; otherwise it *woke* it (or waited for a wake under way), and it
*swapped* when another model on its device started sleeping between its send and its model's
wake (idleTimeout is longer than the run, so every sleep is an eviction).

Also recorded: violations of every simulator (each engine's `/_sim/violations` at its private
twin address, and the sim-kubelet's record, which keeps engines that were restarted), OOMs
(the `*_oom` violations, and containers terminated OOMKilled), pod restarts, and the operator's
and the gateway's CPU and RSS every `--sample` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from swap_bench import (
    NS,
    Models,
    _eq,
    _not_logs,
    deploy,
    model_manifest,
    phase_of,
    pool_manifest,
    until,
)
from vllm_sleep.testing.arrivals import Arrival, TraceShape, arrivals
from vllm_sleep.testing.replay import Outcome, replay
from wake_bench import Cluster, _has_uvloop, free_port, pct, start_stack

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "vllm-sleep.io/device"
SIZES = (0.4, 0.7)  # two small fit a device awake; a large one fills it
CLK, PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


def proc_sample(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system) and RSS bytes of a process and its live descendants (the
    gateway's worker processes), from /proc."""
    cpu, rss, todo = 0.0, 0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended between the listing and the read
        cpu += (int(fields[11]) + int(fields[12])) / CLK
        rss += int(fields[21]) * PAGE
    return cpu, rss


async def sample_processes(
    pids: dict[str, int], every: float, out: list[dict[str, Any]], t0: float
) -> None:
    last: dict[str, float] = {}
    while True:
        row: dict[str, Any] = {"t": round(time.time() - t0, 1), "load1": os.getloadavg()[0]}
        for name, pid in pids.items():
            cpu, rss = proc_sample(pid)
            if name in last:
                row[f"{name}_cores"] = round((cpu - last[name]) / every, 3)
            row[f"{name}_rss_mib"] = round(rss / 2**20, 1)
            last[name] = cpu
        out.append(row)
        await asyncio.sleep(every)


def classify(models: Models, devices: dict[str, str], o: Outcome) -> str:
    """`awake`, `woken` (waited for its model's wake, no eviction for it) or `swapped`."""
    name = o.arrival.model
    if models.state_at(name, o.sent) == "awake":
        return "awake"
    awake_at = next(
        (s for st, s in models.agent[name].agent if st == "awake" and s >= o.sent), None
    )
    if awake_at is None:
        return "woken"
    for other, tl in models.agent.items():
        if other == name or devices.get(other) != devices.get(name):
            continue
        if any(st in ("draining", "sleeping") and o.sent <= s <= awake_at for st, s in tl.agent):
            return "swapped"
    return "woken"


def dist(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50_ms": round(pct(xs, 50) * 1e3, 1),
        "p99_ms": round(pct(xs, 99) * 1e3, 1),
    }


def intervals(models: Models, names: list[str], t0: float, t1: float) -> dict[str, list[list[Any]]]:
    """Per model: [start, end, state] spans (seconds after t0) of its agent's states."""
    out: dict[str, list[list[Any]]] = {}
    for n in names:
        points = sorted({(s, st) for st, s in models.agent[n].agent})
        spans = []
        for (s, st), nxt in zip(points, [*points[1:], (t1, "")], strict=True):
            if nxt[0] >= t0 and s <= t1:
                spans.append([round(max(s, t0) - t0, 3), round(min(nxt[0], t1) - t0, 3), st])
        out[n] = spans
    return out


async def engine_violations(http: aiohttp.ClientSession, models: Models) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, url in models.engine.items():
        async with http.get(f"{url}/_sim/violations") as r:
            out[n] = await r.json()
    return out


async def pod_faults(core: Any) -> dict[str, Any]:
    """Restarts and OOMKilled terminations of the model pods' containers."""
    restarts, oom_killed = 0, 0
    for p in (await core.list_namespaced_pod(NS)).items:
        for c in p.status.container_statuses or []:
            restarts += c.restart_count or 0
            for st in (c.state, c.last_state):
                if st and st.terminated and st.terminated.reason == "OOMKilled":
                    oom_killed += 1
    return {"restarts": restarts, "oom_killed": oom_killed}


async def soak(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    from kubernetes_asyncio import client, config

    api = await config.new_client_from_config(config_file=cluster.kubeconfig)
    core, objs = client.CoreV1Api(api), client.CustomObjectsApi(api)
    gateway = f"http://127.0.0.1:{args.gateway_port}"
    names = [f"m{i}" for i in range(args.models)]
    size = {n: SIZES[i % 2] for i, n in enumerate(names)}
    manifests = [model_manifest(n, 1, size[n], args.weights) for n in names]
    for m in manifests:
        m["spec"]["sleep"]["idleTimeout"] = args.idle_timeout
    deploy(cluster, manifests)
    for n in names:
        await until(lambda n=n: _eq(phase_of(objs, n), "Asleep"), f"{n} pre-warmed", 900)
    pods = {
        n: await core.list_namespaced_pod(NS, label_selector=f"vllm-sleep.io/model={n}")
        for n in names
    }
    devices = {n: pods[n].items[0].metadata.annotations.get(DEVICE, "") for n in names}
    print(f"devices: {devices}", flush=True)

    shape = TraceShape(rate=args.rate, cv=args.cv, period=args.period, swing=args.swing)
    trace: list[Arrival] = arrivals(names, args.minutes * 60, args.seed, shape)
    print(f"{len(trace)} arrivals over {args.minutes} min", flush=True)
    samples: list[dict[str, Any]] = []
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        models = Models(cluster, http, names)
        await models.follow(core)
        await asyncio.sleep(1)
        done: list[Outcome] = []

        def progress(o: Outcome) -> None:
            done.append(o)
            if len(done) % 200 == 0:
                bad = sum(not x.ok for x in done)
                print(f"{time.strftime('%H:%M:%S')} {len(done)} done, {bad} failed", flush=True)
            if not o.ok:
                print(f"failed: {o.arrival.model} {o.status} {o.error[:160]}", flush=True)

        t0 = time.time()
        pids = {"operator": cluster.procs[0].pid, "gateway": cluster.procs[1].pid}
        sampler = asyncio.create_task(sample_processes(pids, args.sample, samples, t0))
        outcomes = await replay(http, gateway, trace, progress)
        t1 = time.time()
        await asyncio.sleep(2)  # the agents' last reports
        sampler.cancel()
        per_engine = await engine_violations(http, models)
        async with http.get(
            f"{cluster.state.kubelet_admin_url}/violations", params={"namespace": NS}
        ) as r:
            kubelet = await r.json()
        faults = await pod_faults(core)
        spans = intervals(models, names, t0, t1)
        classes = [classify(models, devices, o) for o in outcomes]
        await models.stop()
    await api.close()
    return summarize(args, names, size, devices, outcomes, classes, spans, samples, t0, t1) | {
        "violations": {
            "kubelet_count": kubelet["count"],
            "kubelet": kubelet["violations"][:50],
            "engines": per_engine,
            "engine_count": sum(v["count"] for v in per_engine.values()),
        },
        "pod_faults": faults,
    }


def summarize(
    args: argparse.Namespace,
    names: list[str],
    size: dict[str, float],
    devices: dict[str, str],
    outcomes: list[Outcome],
    classes: list[str],
    spans: dict[str, list[list[Any]]],
    samples: list[dict[str, Any]],
    t0: float,
    t1: float,
) -> dict[str, Any]:
    minutes = (t1 - t0) / 60
    ok = [(o, c) for o, c in zip(outcomes, classes, strict=True) if o.ok]

    def ttft(cls: str, stream: bool | None = None) -> dict[str, float]:
        return dist(
            [
                o.first
                for o, c in ok
                if c == cls and o.first is not None and stream in (None, o.arrival.stream)
            ]
        )

    # Entries into asleep / awake during the run (a span at 0 is the state it started in);
    # idleTimeout outlasts the run, so every sleep is an eviction for another model's wake.
    evictions = sum(1 for n in names for s in spans[n] if s[2] == "asleep" and s[0] > 0)
    wakes = sum(1 for n in names for s in spans[n] if s[2] == "awake" and s[0] > 0)
    cpu = [s["operator_cores"] for s in samples if "operator_cores" in s]
    rss = [s["operator_rss_mib"] for s in samples if "operator_rss_mib" in s]
    errors: dict[str, int] = {}
    for o in outcomes:
        if not o.ok:
            key = f"{o.status} {o.error[:80]}"
            errors[key] = errors.get(key, 0) + 1
    return {
        "minutes": round(minutes, 2),
        "requests": len(outcomes),
        "succeeded": len(ok),
        "success_rate": round(len(ok) / max(1, len(outcomes)), 5),
        "errors": errors,
        "streamed_share": round(sum(o.arrival.stream for o in outcomes) / max(1, len(outcomes)), 3),
        "share": {
            c: round(classes.count(c) / max(1, len(classes)), 3)
            for c in ("awake", "woken", "swapped")
        },
        "waited_share": round(1 - classes.count("awake") / max(1, len(classes)), 3),
        "ttft": {
            c: {"all": ttft(c), "streamed": ttft(c, True), "non_streamed": ttft(c, False)}
            for c in ("awake", "woken", "swapped")
        },
        "wakes": wakes,
        "evictions": evictions,
        "swaps_per_minute": round(evictions / minutes, 2),
        "wakes_per_minute": round(wakes / minutes, 2),
        "operator": {
            "cores_mean": round(sum(cpu) / max(1, len(cpu)), 3),
            "cores_max": max(cpu, default=0),
            "rss_mib_first": rss[0] if rss else None,
            "rss_mib_last": rss[-1] if rss else None,
            "rss_mib_max": max(rss, default=0),
        },
        "models": {n: {"size": size[n], "device": devices[n]} for n in names},
        "samples": samples,
        "spans": spans,
        # [seconds after start, model, streamed, class, ttft s or None, ok]
        "requests_log": [
            [
                round(o.sent - t0, 3),
                o.arrival.model,
                o.arrival.stream,
                c,
                None if o.first is None else round(o.first, 4),
                o.ok,
            ]
            for o, c in zip(outcomes, classes, strict=True)
        ],
    }


def plot(result: dict[str, Any], png: Path) -> None:
    """TTFT over time (awake / woken / swapped), each model's agent state, operator CPU and RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(
        3, 1, figsize=(12, 9), dpi=80, sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.3]}
    )
    log = result["requests_log"]
    colors = {"awake": "tab:green", "woken": "tab:orange", "swapped": "tab:red"}
    for cls, color in colors.items():
        pts = [(t / 60, f * 1e3) for t, _, _, c, f, ok in log if c == cls and ok and f is not None]
        if pts:
            xs, ys = zip(*pts, strict=True)
            d = result["ttft"][cls]["all"]
            label = f"{cls} ({d['n']}): p50 {d['p50_ms']:.0f} ms, p99 {d['p99_ms']:.0f} ms"
            ax1.plot(xs, ys, ".", ms=2, color=color, label=label)
    failed = [t / 60 for t, *_, ok in log if not ok]
    if failed:
        ax1.plot(failed, [1] * len(failed), "kx", ms=5, label=f"failed ({len(failed)})")
    ax1.set(yscale="log", ylabel="time to first token (ms)", title="Soak: TTFT per request")
    ax1.legend(fontsize=7, loc="upper right")
    state_color = {
        "awake": "tab:green",
        "waking": "gold",
        "draining": "tab:red",
        "sleeping": "tab:red",
    }
    names = list(result["spans"])
    for i, n in enumerate(names):
        for start, end, st in result["spans"][n]:
            if st in state_color:
                ax2.broken_barh(
                    [(start / 60, (end - start) / 60)], (i - 0.4, 0.8), color=state_color[st]
                )
    labels = [
        f"{n} ({result['models'][n]['size']}, {result['models'][n]['device'][-12:]})" for n in names
    ]
    ax2.set(
        yticks=range(len(names)),
        yticklabels=labels,
        title="agent state (green awake, yellow waking, red sleeping; blank asleep)",
    )
    samples = [s for s in result["samples"] if "operator_cores" in s]
    ax3.plot(
        [s["t"] / 60 for s in samples],
        [s["operator_cores"] for s in samples],
        lw=0.8,
        label="operator cores",
    )
    ax3.set(xlabel="minutes", ylabel="cores")
    ax3b = ax3.twinx()
    ax3b.plot(
        [s["t"] / 60 for s in samples],
        [s["operator_rss_mib"] for s in samples],
        "tab:purple",
        lw=0.8,
        label="operator RSS",
    )
    ax3b.set(ylabel="RSS MiB")
    ax3.legend(fontsize=7, loc="upper left")
    ax3b.legend(fontsize=7, loc="upper right")
    for ax in (ax1, ax3):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)
    print(f"wrote {png}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--models", type=int, default=6)
    p.add_argument("--rate", type=float, default=2.0, help="mean requests/s, all models")
    p.add_argument("--cv", type=float, default=3.0, help="burstiness of each model's gaps")
    p.add_argument("--period", type=float, default=600.0, help="seconds of the diurnal swing")
    p.add_argument("--swing", type=float, default=0.6)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--weights", default="16Gi")
    p.add_argument("--idle-timeout", default="2h", help="longer than the run: sleeps are evictions")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between CPU/RSS samples")
    p.add_argument("--time-scale", type=float, default=1.0)
    p.add_argument("--keep-logs", type=Path, help="copy the processes' logs here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    p.add_argument("--png", type=Path, default=ROOT / "bench" / "results" / "soak.png")
    p.add_argument("--plot", type=Path, help="draw the PNG from this results file, run nothing")
    args = p.parse_args()
    result = json.loads(args.plot.read_text()) if args.plot else run_and_record(args)
    plot(result, args.png)
    return 0


def run_and_record(args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak on its own cluster, write the results file, print the summary."""
    args.gateway_port = free_port()
    load_before, started = os.getloadavg(), time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime())
    cluster = Cluster(args.time_scale, gpu_nodes=1, gpus_per_node=2)
    try:
        start_stack(cluster, args.gateway_port, NS)
        deploy(cluster, [pool_manifest()])
        result = asyncio.run(soak(args, cluster))
    finally:
        if args.keep_logs:
            shutil.copytree(cluster.dir, args.keep_logs, dirs_exist_ok=True, ignore=_not_logs)
        cluster.close()
    result["setup"] = {
        "command": "python bench/soak_bench.py " + " ".join(sys.argv[1:]),
        "started": started,
        "seed": args.seed,
        "shape": asdict(
            TraceShape(rate=args.rate, cv=args.cv, period=args.period, swing=args.swing)
        ),
        "models": args.models,
        "weights": args.weights,
        "profile": "0.34",
        "time_scale": args.time_scale,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "uvloop": _has_uvloop(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    brief = {k: v for k, v in result.items() if k not in ("samples", "spans", "requests_log")}
    print(json.dumps(brief, indent=1)[:6000])
    return result


if __name__ == "__main__":
    sys.exit(main())
