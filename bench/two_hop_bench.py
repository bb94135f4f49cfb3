"""Two hops against two nginx: the gateway and the pod agent in front of one simulated vLLM.

    .venv/bin/python bench/two_hop_bench.py [--requests 2000] [--rounds 6]
                                            [--concurrency 1,16,64] [--layouts shared,pinned,split,alone]
                                            [--targets nginx+nginx,gateway+agent,...]
                                            [--base-tree <git worktree>]
                                            [--out bench/results/two_hop.json]
    .venv/bin/python bench/two_hop_bench.py --report bench/results/two_hop.json

Every request crosses two proxies in production: the gateway, then the pod's agent. This puts
the same upstream, the vLLM simulator (`vllm-sleep sim`, time scale 0: no simulated compute,
8 streamed tokens per request), behind five targets, all processes of one run:

    direct          load generator -> simulator
    nginx           -> nginx (back) -> simulator
    agent           -> agent -> simulator
    nginx+nginx     -> nginx (front) -> nginx (back) -> simulator
    gateway+agent   -> gateway -> agent -> simulator

and two mixed pairs, which say which of our hops the gap is in (one of them swapped for nginx):

    gateway+nginx   -> gateway (a second one) -> nginx (back) -> simulator
    nginx+agent     -> nginx (a second front) -> agent -> simulator

The agent is `vllm-sleep agent` as shipped (its public port, its own process); the gateway is
gateway_bench.py's (StaticSource, uvloop); nginx is gateway_bench.py's configuration (one
worker, upstream keepalive, `proxy_buffering off`). The load generator, the interleaved rounds
and the CPU reading are gateway_bench.py's too: each cell warms every target, then runs
`--rounds` rounds of every target in turn, the order rotated per round, so the host's drift is
spread over all of them. Added = target percentile - direct percentile of the time to first
chunk. CPU per request is read per hop (each proxy process's utime+stime from /proc, nginx's
master and worker together) over the timed requests that hop carried, and so are its context
switches and its time runnable but waiting for a CPU (schedstat's run delay).

With `--base-tree` (a `git worktree` of another commit) that checkout's agent is a target of
its own (`agent@base`, one hop), and its gateway in front of it another
(`gateway+agent@base`): before and after side by side in one run. `--targets` measures a
subset (the direct path always).

Layouts: `shared` and `pinned` as in gateway_bench.py (`shared` lets the OS place everything;
`pinned` puts all four proxies on CPU 0 and the simulator and load generator on the others);
`split` gives each hop a CPU of its own, as production does (the gateway's pods and a model's pod
never share a core): the front hop (gateway, front nginx) and the load generator on CPU 0, the
back hop (agent, back nginx) and the simulator on CPU 1, like an agent beside vLLM in its pod.
`alone` is `split` with the load generator moved to CPU 1: the front hop has CPU 0 to itself, so
nothing else runs on its core between its events (a diagnostic of what a wake-up costs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import gateway_bench as gb

SIM_HOST, AGENT_HOST = "127.0.11.1", "127.0.11.2"
TOKEN = "two-hop-bench"
PATH = "/v1/chat/completions"
# target -> the proxy processes it crosses, first hop first
TARGETS = {
    "direct": (),
    "nginx": ("nginx back",),
    "agent": ("agent",),
    "nginx+nginx": ("nginx front", "nginx back"),
    "gateway+agent": ("gateway", "agent"),
    # the mixed pairs: a gateway of their own in front of the back nginx, a front nginx of
    # their own in front of the agent (the back nginx and the agent are the same processes)
    "gateway+nginx": ("gateway to nginx", "nginx back"),
    "nginx+agent": ("nginx front to agent", "agent"),
    "agent@base": ("agent@base",),  # with --base-tree: another checkout's agent, one hop
    # with --base-tree: that checkout's gateway and agent, both hops
    "gateway+agent@base": ("gateway@base", "agent@base"),
}
PAIRS = (
    ("agent", "nginx"),
    ("gateway+agent", "nginx+nginx"),
    ("gateway+nginx", "nginx+nginx"),
    ("nginx+agent", "nginx+nginx"),
    ("agent@base", "nginx"),
    ("gateway+agent@base", "nginx+nginx"),
)


def run_delay(pid: int) -> float:
    """Seconds a process (and its direct children: nginx's worker) spent runnable but not
    running, waiting for a CPU (/proc/<pid>/schedstat; its main thread, the event loop's): what
    a hop waits for its core after each wake-up, while another process runs there."""

    def one(p: int) -> int:
        return int(Path(f"/proc/{p}/schedstat").read_text().split()[1])

    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return (one(pid) + sum(one(int(k)) for k in kids)) / 1e9


def wait_listening(host: str, port: int, proc: subprocess.Popen[Any], what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not listen on {host}:{port}")


def start_cli(argv: list[str], cpus: set[int] | None, env: dict[str, str]) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "vllm_sleep.cli", *argv],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )


def agent_awake(control: str) -> None:
    """The agent starts holding (it detects the engine first): wait for `awake`."""
    deadline = time.monotonic() + 30
    req = urllib.request.Request(f"{control}/state", headers={"Authorization": f"Bearer {TOKEN}"})
    while time.monotonic() < deadline:
        with urllib.request.urlopen(req, timeout=5) as r:
            if json.load(r)["state"] == "awake":
                return
        time.sleep(0.1)
    raise RuntimeError("the agent never reported the engine awake")


LAYOUTS = ("shared", "pinned", "split", "alone")


@dataclass(frozen=True)
class Placement:
    """The CPUs of each role in a layout (None: the OS places it)."""

    front: set[int] | None  # the gateway, the front nginx
    back: set[int] | None  # the agent, the back nginx, and a lone nginx
    upstream: set[int] | None  # the simulator


@contextlib.contextmanager
def placed(layout: str) -> Iterator[tuple[Placement, list[subprocess.Popen[Any]]]]:
    """gateway_bench's placement, plus `split`: this process (the load generator) on CPU 0 with
    the front hop, the back hop and the simulator on CPU 1; and `alone`: split with the load
    generator moved to CPU 1, so the front hop has a core to itself."""
    if layout not in ("split", "alone"):
        with gb.placed(layout) as (proxy_cpus, rest, procs):
            yield Placement(proxy_cpus, proxy_cpus, rest), procs
        return
    mine = os.sched_getaffinity(0)
    with gb.placed("shared") as (_, _, procs):
        os.sched_setaffinity(0, {0} if layout == "split" else {1})
        try:
            yield Placement({0}, {1}, {1}), procs
        finally:
            os.sched_setaffinity(0, mine)


def start_all(
    tmp: Path,
    procs: list[subprocess.Popen[Any]],
    where: Placement,
    base_tree: Path | None = None,
    targets: tuple[str, ...] = (),
) -> tuple[dict[str, str], dict[str, int]]:
    """Every process of one layout, appended to `procs` as started (the caller stops them):
    the URL of each target and the pid of each hop."""
    sim_port = gb.free_port(SIM_HOST)
    sim_argv = ["sim", gb.MODEL, "--host", SIM_HOST, "--port", str(sim_port)]
    sim_argv += ["--time-scale", "0", "--default-max-tokens", "8"]
    procs.append(start_cli(sim_argv, where.upstream, {"VLLM_SERVER_DEV_MODE": "1"}))  # as in a pod
    wait_listening(SIM_HOST, sim_port, procs[-1], "the simulator")
    sim = f"{SIM_HOST}:{sim_port}"

    def start_agent(env: dict[str, str]) -> str:
        public, control = gb.free_port(AGENT_HOST), gb.free_port(AGENT_HOST)
        argv = ["agent", "--listen-host", AGENT_HOST, "--upstream", f"http://{sim}"]
        argv += ["--public-port", str(public), "--control-port", str(control)]
        procs.append(start_cli(argv, where.back, {"VLLM_SLEEP_CONTROL_TOKEN": TOKEN, **env}))
        wait_listening(AGENT_HOST, control, procs[-1], "the agent")
        agent_awake(f"http://{AGENT_HOST}:{control}")
        return f"http://{AGENT_HOST}:{public}"

    agent = start_agent({})

    gw_port = gb.free_port(gb.HOSTS["gateway"])
    gw_argv = ["--role", "gateway", "--port", str(gw_port), "--upstream", agent]
    procs.append(gb.spawn([*gw_argv, "--loop", "uvloop"], where.front))

    back_port, front_port = gb.free_port(gb.HOSTS["nginx"]), gb.free_port(gb.HOSTS["nginx"])
    (tmp / "back").mkdir()
    (tmp / "front").mkdir()
    back = gb.start_nginx(tmp / "back", sim, back_port, where.back)
    procs.append(back)
    front_upstream = f"{gb.HOSTS['nginx']}:{back_port}"
    front = gb.start_nginx(tmp / "front", front_upstream, front_port, where.front)
    procs.append(front)

    nginx = f"http://{gb.HOSTS['nginx']}"
    urls = {
        "direct": f"http://{sim}{PATH}",
        "nginx": f"{nginx}:{back_port}{PATH}",
        "agent": agent + PATH,
        "nginx+nginx": f"{nginx}:{front_port}{PATH}",
        "gateway+agent": f"http://{gb.HOSTS['gateway']}:{gw_port}{PATH}",
    }
    pids = {"agent": procs[1].pid, "gateway": procs[2].pid}
    pids |= {"nginx back": back.pid, "nginx front": front.pid}
    if base_tree is not None:
        base_agent = start_agent({"PYTHONPATH": str(base_tree / "operator")})
        urls["agent@base"] = base_agent + PATH
        pids["agent@base"] = procs[-1].pid
        base_gw_port = gb.free_port(gb.HOSTS["gateway"])
        argv = ["--role", "gateway", "--port", str(base_gw_port), "--upstream", base_agent]
        procs.append(gb.spawn([*argv, "--loop", "uvloop"], where.front, tree=base_tree))
        urls["gateway+agent@base"] = f"http://{gb.HOSTS['gateway']}:{base_gw_port}{PATH}"
        pids["gateway@base"] = procs[-1].pid
    if "gateway+nginx" in targets:
        port = gb.free_port(gb.HOSTS["gateway"])
        argv = ["--role", "gateway", "--port", str(port), "--upstream", f"{nginx}:{back_port}"]
        procs.append(gb.spawn([*argv, "--loop", "uvloop"], where.front))
        urls["gateway+nginx"] = f"http://{gb.HOSTS['gateway']}:{port}{PATH}"
        pids["gateway to nginx"] = procs[-1].pid
    if "nginx+agent" in targets:
        port = gb.free_port(gb.HOSTS["nginx"])
        (tmp / "front-agent").mkdir()
        agent_addr = agent.removeprefix("http://")
        procs.append(gb.start_nginx(tmp / "front-agent", agent_addr, port, where.front))
        urls["nginx+agent"] = f"{nginx}:{port}{PATH}"
        pids["nginx front to agent"] = procs[-1].pid
    return urls, pids


async def cell(
    args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int], streams: int
) -> dict[str, Any]:
    """One concurrency: every target, interleaved; each hop's CPU charged to the target."""
    per_round = max(1, args.requests // args.rounds)
    names = [t for t in TARGETS if t in urls and (t == "direct" or t in args.targets)]
    samples: dict[str, list[dict[str, Any]]] = {t: [] for t in names}
    cpu = {t: dict.fromkeys(TARGETS[t], 0.0) for t in names}
    switches = {t: dict.fromkeys(TARGETS[t], 0) for t in names}
    waited = {t: dict.fromkeys(TARGETS[t], 0.0) for t in names}
    for target in names:
        await gb.run_cell(urls[target], streams, 0, args.warmup)
    for rnd in range(args.rounds):
        k = rnd % len(names)
        for target in names[k:] + names[:k]:
            before = {hop: gb.cpu_seconds(pids[hop]) for hop in TARGETS[target]}
            switched = {hop: gb.context_switches(pids[hop]) for hop in TARGETS[target]}
            delayed = {hop: run_delay(pids[hop]) for hop in TARGETS[target]}
            samples[target].append(await gb.run_cell(urls[target], streams, per_round, 0))
            for hop, then in before.items():
                cpu[target][hop] += gb.cpu_seconds(pids[hop]) - then
                switches[target][hop] += gb.context_switches(pids[hop]) - switched[hop]
                waited[target][hop] += run_delay(pids[hop]) - delayed[hop]
    row: dict[str, Any] = {}
    timed = per_round * args.rounds
    for target in names:
        row[target] = gb.summarize(samples[target])
        row[target]["cpu_us_per_request"] = {
            hop: round(seconds / timed * 1e6, 1) for hop, seconds in cpu[target].items()
        }
        direct = row["direct"]["ttfb_ms"]
        # Per-event cost, not only per-request: at one stream each hop sleeps between events,
        # so CPU per switch is what one wake-up of the proxy costs.
        row[target]["switches_per_request"] = {
            hop: round(n / timed, 2) for hop, n in switches[target].items()
        }
        # Time runnable but not running: a woken hop waiting for its core while another
        # process (the load generator, the simulator, another hop) has it.
        row[target]["run_delay_us_per_request"] = {
            hop: round(seconds / timed * 1e6, 1) for hop, seconds in waited[target].items()
        }
        row[target]["added_ttfb_ms"] = {
            p: round(row[target]["ttfb_ms"][p] - direct[p], 3) for p in ("p50", "p99")
        }
        print(f"c={streams:<3} {target:<14} {json.dumps(row[target])}", flush=True)
    row["ratios"] = ratios(row)
    print(f"c={streams:<3} ratios {json.dumps(row['ratios'])}", flush=True)
    return row


def ratios(row: dict[str, Any]) -> dict[str, Any]:
    """Ours over nginx's: added time to first chunk per percentile, and CPU per request (the
    agent's own hop, and both hops summed)."""

    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 2) if b > 0 else None

    out: dict[str, Any] = {}
    for ours, theirs in [(a, b) for a, b in PAIRS if a in row and b in row]:
        a, b = row[ours], row[theirs]
        out[f"{ours} / {theirs}"] = {
            "added_ttfb_p50": ratio(a["added_ttfb_ms"]["p50"], b["added_ttfb_ms"]["p50"]),
            "added_ttfb_p99": ratio(a["added_ttfb_ms"]["p99"], b["added_ttfb_ms"]["p99"]),
            "cpu_per_request": ratio(
                sum(a["cpu_us_per_request"].values()), sum(b["cpu_us_per_request"].values())
            ),
        }
    if "gateway+agent" in row and "nginx+nginx" in row:
        out["agent hop in two hops / nginx back hop in two"] = ratio(
            row["gateway+agent"]["cpu_us_per_request"]["agent"],
            row["nginx+nginx"]["cpu_us_per_request"]["nginx back"],
        )
    return out


def run_layout(args: argparse.Namespace, layout: str, tmp: Path) -> dict[str, Any]:
    tmp.mkdir()
    with placed(layout) as (where, procs):
        urls, pids = start_all(tmp, procs, where, args.base_tree, tuple(args.targets))
        print(f"-- layout {layout}", flush=True)

        async def every_cell() -> dict[str, Any]:
            return {str(c): await cell(args, urls, pids, c) for c in args.concurrency}

        return asyncio.run(every_cell())


def report(path: Path) -> str:
    """The results file as the table in docs/benchmarks.md (with only the two-hop targets
    measured, `--targets nginx+nginx,gateway+agent,gateway+agent@base`: `ab_report`'s)."""
    doc = json.loads(path.read_text())
    cells = [row for layout in doc["results"].values() for row in layout.values()]
    if cells and ("gateway+nginx" in cells[0] or "nginx+agent" in cells[0]):
        return hop_report(doc) + "\n\n" + first_chunk_report(doc)
    if cells and "agent" not in cells[0]:
        return ab_report(doc)
    lines = [
        "| layout | streams | direct p50 / p99 | added p50 / p99: agent · nginx | "
        "added p50 / p99: gateway+agent · nginx+nginx | CPU µs/req agent · nginx | "
        "CPU µs/req gateway + agent · front + back nginx |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def added(r: dict[str, Any]) -> str:
        a = r["added_ttfb_ms"]
        return f"{a['p50']:+.2f} / {a['p99']:+.2f}"

    base = doc.get("base_commit")
    cells = [row for layout in doc["results"].values() for row in layout.values()]
    extra = [t for t in ("agent@base", "gateway+agent@base") if base and cells and t in cells[0]]
    for t in extra:
        lines[0] += f" CPU µs/req {t.replace('@base', '@' + base[:7])} (added p50 / p99) |"
        lines[1] += " --- |"

    def extra_cells(row: dict[str, Any]) -> str:
        out = ""
        for t in extra:
            cpu = " + ".join(f"{v:.0f}" for v in row[t]["cpu_us_per_request"].values())
            out += f" {cpu} ({added(row[t])}) |"
        return out

    for layout, cells in doc["results"].items():
        for c, row in cells.items():
            d = row["direct"]["ttfb_ms"]
            two, ngx2 = row["gateway+agent"], row["nginx+nginx"]
            g, ag = two["cpu_us_per_request"]["gateway"], two["cpu_us_per_request"]["agent"]
            f, b = (
                ngx2["cpu_us_per_request"]["nginx front"],
                ngx2["cpu_us_per_request"]["nginx back"],
            )
            lines.append(
                f"| {layout} | {c} | {d['p50']:.2f} / {d['p99']:.2f} "
                f"| {added(row['agent'])} · {added(row['nginx'])} "
                f"| {added(two)} · {added(ngx2)} "
                f"| {row['agent']['cpu_us_per_request']['agent']:.0f} · "
                f"{row['nginx']['cpu_us_per_request']['nginx back']:.0f} "
                f"| {g:.0f} + {ag:.0f} · {f:.0f} + {b:.0f} |" + extra_cells(row)
            )
    return "\n".join(lines)


MIXED = ("gateway+agent", "gateway+nginx", "nginx+agent")


def hop_report(doc: dict[str, Any]) -> str:
    """Which hop: each pair with one or both of our hops against two nginx hops, per cell: the
    added time to first chunk (p50 / p99), its ratio to two nginx hops', and each hop's CPU and
    context switches per request (front hop first)."""
    pairs = [t for t in MIXED if t in next(iter(next(iter(doc["results"].values())).values()))]
    lines = [
        "| layout | streams | added p50 / p99 (ms): nginx+nginx · "
        + " · ".join(pairs)
        + " | ratio p50: "
        + " · ".join(pairs)
        + " | ratio p99: "
        + " · ".join(pairs)
        + " | CPU µs/req front + back: nginx+nginx · "
        + " · ".join(pairs)
        + " | switches/req front + back: nginx+nginx · "
        + " · ".join(pairs)
        + " | waiting for a CPU, µs/req front + back: nginx+nginx · "
        + " · ".join(pairs)
        + " |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def added(r: dict[str, Any]) -> str:
        a = r["added_ttfb_ms"]
        return f"{a['p50']:.2f} / {a['p99']:.2f}"

    def ratio(a: dict[str, Any], b: dict[str, Any], p: str) -> str:
        ours, theirs = a["added_ttfb_ms"][p], b["added_ttfb_ms"][p]
        return f"{ours / theirs:.2f}" if theirs > 0 else "\u2013"

    def per_hop(r: dict[str, Any], key: str, fmt: str) -> str:
        return " + ".join(format(v, fmt) for v in r[key].values())

    for layout, cells in doc["results"].items():
        for c, row in cells.items():
            ngx = row["nginx+nginx"]
            rows = [ngx] + [row[t] for t in pairs]
            lines.append(
                f"| {layout} | {c} | "
                + " · ".join(added(r) for r in rows)
                + " | "
                + " · ".join(ratio(row[t], ngx, "p50") for t in pairs)
                + " | "
                + " · ".join(ratio(row[t], ngx, "p99") for t in pairs)
                + " | "
                + " · ".join(per_hop(r, "cpu_us_per_request", ".0f") for r in rows)
                + " | "
                + " · ".join(per_hop(r, "switches_per_request", ".1f") for r in rows)
                + " | "
                + " · ".join(
                    per_hop(r, "run_delay_us_per_request", ".0f")
                    if "run_delay_us_per_request" in r
                    else "\u2013"  # results before this column have none
                    for r in rows
                )
                + " |"
            )
    return "\n".join(lines)


def first_chunk_report(doc: dict[str, Any]) -> str:
    """Time to first chunk against the whole answer's time and throughput, per target."""
    lines = [
        "| layout | streams | target | first chunk p50 / p99 (ms) | whole answer p50 / p99 (ms) "
        "| after the first chunk, p50 (ms) | req/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for layout, cells in doc["results"].items():
        for c, row in cells.items():
            for target, r in row.items():
                if target == "ratios":
                    continue
                f, w = r["ttfb_ms"], r["total_ms"]
                lines.append(
                    f"| {layout} | {c} | {target} | {f['p50']:.2f} / {f['p99']:.2f} "
                    f"| {w['p50']:.2f} / {w['p99']:.2f} | {w['p50'] - f['p50']:.2f} "
                    f"| {r['rps']:.0f} |"
                )
    return "\n".join(lines)


def ab_report(doc: dict[str, Any]) -> str:
    """Two hops now and at the base commit against two nginx hops, per cell: the added time
    to first chunk, its ratio to nginx's (p50, p99) and both hops' CPU per request."""
    lines = [
        "| layout | streams | two hops' added p50 (ms): now · base / two nginx hops' "
        "| ratio p50: now · base | ratio p99: now · base | CPU µs/req both hops: now · base · "
        "two nginx | switches/req both hops: now · two nginx |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]

    def ratio(a: dict[str, Any], b: dict[str, Any], p: str) -> str:
        ours, theirs = a["added_ttfb_ms"][p], b["added_ttfb_ms"][p]
        return f"{ours / theirs:.2f}" if theirs > 0 else "\u2013"  # nginx added nothing measurable

    def cpu(r: dict[str, Any]) -> str:
        return f"{sum(r['cpu_us_per_request'].values()):.0f}"

    def switches(r: dict[str, Any]) -> str:
        per = r.get("switches_per_request")  # results before this column have none
        return f"{sum(per.values()):.1f}" if per else "\u2013"

    for layout, cells in doc["results"].items():
        for c, row in cells.items():
            now, ngx = row["gateway+agent"], row["nginx+nginx"]
            base = row.get("gateway+agent@base", now)
            added = f"{now['added_ttfb_ms']['p50']:.3f} · {base['added_ttfb_ms']['p50']:.3f}"
            lines.append(
                f"| {layout} | {c} | {added} / {ngx['added_ttfb_ms']['p50']:.3f} "
                f"| {ratio(now, ngx, 'p50')} · {ratio(base, ngx, 'p50')} "
                f"| {ratio(now, ngx, 'p99')} · {ratio(base, ngx, 'p99')} "
                f"| {cpu(now)} · {cpu(base)} · {cpu(ngx)} | {switches(now)} · {switches(ngx)} |"
            )
    return "\n".join(lines)


def base_commit(tree: Path | None) -> str | None:
    if tree is None:
        return None
    rev = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    return rev.stdout.strip() or None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=2000, help="timed requests per target/cell")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    p.add_argument(
        "--layouts",
        type=lambda s: [x for x in s.split(",") if x in LAYOUTS],
        default=["shared", "pinned"],
    )
    p.add_argument(
        "--targets",
        type=lambda s: s.split(","),
        default=list(TARGETS),
        help="the targets to measure (direct always): e.g. nginx+nginx,gateway+agent",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "two_hop.json")
    p.add_argument("--report", type=Path, help="print a results file as a markdown table")
    p.add_argument(
        "--base-tree",
        type=Path,
        help="also measure the agent of this checkout (e.g. a `git worktree` of an older commit)",
    )
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return 0
    load_before = os.getloadavg()
    # Pinning needs a CPU for the proxies and another for the rest.
    usable = [x for x in args.layouts if x == "shared" or len(os.sched_getaffinity(0)) > 1]
    with tempfile.TemporaryDirectory(prefix="two-hop-") as tmp:
        layouts = {x: run_layout(args, x, Path(tmp) / x) for x in usable}
    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"
    nginx = subprocess.run([nginx_bin, "-v"], capture_output=True, text=True).stderr.strip()
    result = {
        "benchmark": "two hops: gateway + agent vs nginx + nginx (SSE from the simulator)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_before,
            "loadavg_at_end": os.getloadavg(),
            "nginx": nginx,
        },
        "params": {
            k: str(v) if isinstance(v, Path) else v
            for k, v in vars(args).items()
            if k not in ("out", "report")
        },
        "base_commit": base_commit(args.base_tree),
        "results": layouts,
    }
    gb.write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
