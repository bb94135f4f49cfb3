"""`vllm-sleep demo` (`make demo`): the product in about a minute, on a fresh machine.

Steps: a local cluster with simulated GPU nodes (reused when `vllm-sleep dev up` runs one),
CRDs + RBAC, the operator and the gateway as background processes with ServiceAccount tokens,
a one-GPU demo node whose GPU a GPUPool shares between three models that load, pre-warm and
fall asleep one after the other, one request through the gateway that wakes a model and
streams, then traffic hopping between the models, so the GPU (one model awake at a time) swaps
them: evict one, wake the next. Every model asleep again, zero requests that reached a sleeping
engine, zero OOMs, and a PNG timeline of the models' states and the GPU's memory.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.rule import Rule
from rich.table import Table

from ..testing.cluster.build import BuildError
from ..testing.cluster.processes import ClusterError
from . import cluster as local
from . import gpunode, services
from .flow import (
    DemoConfig,
    Report,
    back_to_sleep,
    check_violations,
    deploy,
    request_through_gateway,
    swap_phase,
    wait_prewarmed,
)
from .kube import DemoError
from .models import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TIME_SCALE,
    DEVICE_GIB,
    FAST_TIME_SCALE,
    MODELS,
    by_name,
    fmt_seconds,
    real_equivalent_ttft,
    render_examples,
)
from .plot import NoMatplotlib, write_png
from .record import Recorder
from .timeline import Timeline
from .track import Tracker
from .view import next_steps, swap_summary, timing_model_table

DEFAULT_PNG = Path(tempfile.gettempdir()) / "vllm-sleep-demo-timeline.png"
FAST_SWAP_SECONDS = 8.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-sleep demo", description=__doc__)
    p.add_argument(
        "--state-dir",
        type=Path,
        default=local.DEFAULT_STATE_DIR,
        help="cluster state (the `vllm-sleep dev` cluster by default)",
    )
    p.add_argument(
        "--time-scale",
        type=float,
        default=None,
        help=f"simulated GPU time x this (default {DEFAULT_TIME_SCALE}: 10x faster)",
    )
    p.add_argument(
        "--idle-timeout", default=DEFAULT_IDLE_TIMEOUT, help="the models' sleep.idleTimeout"
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help=f"CI-ish: time scale {FAST_TIME_SCALE}, ask for the sleep instead of "
        "waiting for idleTimeout",
    )
    p.add_argument(
        "--down",
        action="store_true",
        help="stop everything (cluster, operator, gateway) at the end",
    )
    p.add_argument(
        "--restart-services",
        action="store_true",
        help="restart the operator and the gateway even if they run",
    )
    p.add_argument(
        "--swap-seconds",
        type=float,
        default=None,
        help="how long the swap phase sends requests (default 15, 8 with --fast)",
    )
    p.add_argument(
        "--png",
        type=Path,
        default=DEFAULT_PNG,
        help=f"where to write the timeline picture (default {DEFAULT_PNG})",
    )
    p.add_argument(
        "--write-examples",
        type=Path,
        metavar="DIR",
        help="write the demo's ModelDeployments to DIR and exit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.write_examples:
        args.write_examples.mkdir(parents=True, exist_ok=True)
        for name, text in render_examples().items():
            (args.write_examples / name).write_text(text)
            print(args.write_examples / name)
        return 0
    scale = args.time_scale or (FAST_TIME_SCALE if args.fast else DEFAULT_TIME_SCALE)
    cfg = DemoConfig(time_scale=scale, idle_timeout=args.idle_timeout, wait_idle=not args.fast)
    if args.swap_seconds or args.fast:
        cfg.swap_seconds = args.swap_seconds or FAST_SWAP_SECONDS
    console = Console()
    try:
        return run(args, cfg, console)
    except (DemoError, ClusterError, BuildError) as e:
        console.print(f"\n[bold red]demo failed:[/] {e}")
        console.print(f"logs: {args.state_dir / 'logs'}   stop everything: vllm-sleep dev down")
        return 1
    except KeyboardInterrupt:
        console.print("\ninterrupted; the cluster keeps running (`vllm-sleep dev down` stops it)")
        return 130


def run(args: argparse.Namespace, cfg: DemoConfig, console: Console) -> int:
    started = time.monotonic()
    started_at = time.time()  # the violations this run reports are those recorded since
    console.print(Rule("[bold]vllm-sleep-operator demo[/]"))
    console.print(
        "Many vLLM models on few GPUs: idle models sleep (GPU memory free, weights in host RAM)\n"
        "and wake in about a second when a request arrives, instead of cold-starting in minutes.\n"
    )

    step(console, 1, "Local Kubernetes with simulated GPU nodes")
    with console.status(
        "starting etcd, kube-apiserver, controller-manager, scheduler and the "
        "sim-kubelet (2 nodes x 2 simulated H100 80Gi) ..."
    ):
        t = time.monotonic()
        lc = local.ensure(args.state_dir, cfg.time_scale, lambda s: console.log(s))
    if lc.started:
        console.print(
            f"  cluster up in {time.monotonic() - t:.1f} s: {lc.state.api_url}  "
            f"(real apiserver v1.36, state in {lc.state.state_dir})"
        )
    else:
        console.print(
            f"  reusing the running local cluster: {lc.state.api_url} (state in {lc.state.state_dir})"
        )
    console.print()

    step(console, 2, "Install: CRDs, RBAC, operator, gateway")
    for line in services.install(lc.cluster):
        console.print(f"  $ {line}")
    with console.status("starting the operator and the gateway ..."):
        svc = services.ensure(lc.state, lc.cluster, lambda s: None, restart=args.restart_services)
    how = "already running, reused" if svc.reused else "started in the background"
    console.print(
        f"  operator + gateway {how}, each with its own ServiceAccount token (least privilege)"
    )
    console.print(f"  gateway: [bold]{svc.gateway_url}/v1[/]   logs: {lc.state.logs}/")
    with console.status("starting the demo's GPU node (one simulated 80 GiB H100) ..."):
        node = gpunode.ensure(
            lc.cluster,
            Path(lc.state.state_dir),
            cfg.time_scale,
            record=lambda pid, admin_url: _record(lc, pid, admin_url),
        )
    console.print(
        f"  GPU node {node.name}: one simulated H100, {DEVICE_GIB:.0f} GiB "
        f"({'reused' if node.reused else 'its own sim-kubelet'}), tainted for the demo only"
    )
    console.print(
        f"  GPU time runs at [bold]x{cfg.time_scale:g}[/] (demo node x{node.time_scale:g}"
        + (
            ""
            if abs(node.time_scale - cfg.time_scale) < 1e-9
            else f", engines x{cfg.time_scale / node.time_scale:g}"
        )
        + "): every duration below is shown measured and as the simulated real-GPU time.\n"
    )

    console.print(timing_model_table(cfg.time_scale))
    console.print()

    step(
        console,
        3,
        f"One GPUPool, three models on its one GPU, namespace {cfg.namespace} "
        "(deploy/examples/demo/)",
    )
    console.print(
        f"  each model takes 60% of the GPU awake ({DEVICE_GIB * 0.6:.0f} GiB) and ~1.4 GiB "
        "asleep: the GPU holds one awake at a time"
    )
    timeline = Timeline(cfg.names, int(DEVICE_GIB * 2**30))
    recorder = Recorder(
        lc.cluster, node.admin_url, cfg.namespace, cfg.pool, timeline, time.monotonic()
    )
    for line in deploy(lc.cluster, cfg, node.time_scale):
        console.print(f"  $ kubectl apply -f deploy/examples/demo/  ->  {line}")
    report = Report()
    tracker = wait_prewarmed(lc.cluster, cfg, console, report, recorder)
    console.print(
        f"  all three pre-warmed and asleep after {fmt_seconds(report.ready_after)}, loaded one "
        "after the other (start-up on a shared GPU is serialised): the GPU is free again, and "
        "the slow first sleep is already paid.\n"
    )

    step(console, 4, f"One request to the sleeping {cfg.chat_model}, through the gateway")
    console.print(
        f"  $ curl {svc.gateway_url}/v1/chat/completions -d "
        f'\'{{"model": "{cfg.chat_model}", "stream": true, ...}}\''
    )
    chat = request_through_gateway(lc.cluster, cfg, console, svc.gateway_url, report, recorder)
    console.print(comparison(cfg, report))
    console.print(f"  {len(chat.tokens)} tokens streamed in {fmt_seconds(chat.total)}\n")

    step(console, 5, "Traffic to all three: the GPU swaps them (evict one, wake the next)")
    console.print(
        f"  random bursts through the gateway for {cfg.swap_seconds:g} s; a request for a "
        "sleeping model is held while the operator drains and sleeps the awake one, waits for "
        "its memory to be released, then wakes the target"
    )
    swap_phase(lc.cluster, cfg, console, svc.gateway_url, report, recorder)
    console.print()

    step(
        console,
        6,
        "Back to sleep" + ("" if cfg.wait_idle else " (`vllm-sleep sleep`, --fast)"),
    )
    back_to_sleep(lc.cluster, cfg, console, report, recorder)
    check_violations(lc.cluster, cfg, report, recorder, since=started_at)
    recorder.close()
    if report.violations:
        console.print(
            f"[bold red]  {len(report.violations)} contract violation(s):[/] "
            f"{report.violations[:3]}"
        )
    else:
        console.print(
            "  [bold green]0 requests reached a sleeping engine[/] (sim-kubelet "
            f"/violations?namespace={cfg.namespace}); the simulator runs vLLM <= 0.16 "
            "behaviour, where one such request crashes the engine.\n"
        )

    console.print(Rule("Summary"))
    console.print(summary(cfg, report, tracker))
    if report.summary is not None:
        console.print(swap_summary(report.summary, report.swaps, cfg.time_scale))
    try:
        png = write_png(timeline, report.requests, report.swaps, args.png)
        console.print(f"\n[bold]timeline:[/] {png}  (models' states above, GPU memory below)\n")
    except NoMatplotlib as e:
        console.print(f"\n[yellow]{e}[/]\n")
    out = lc.cluster.kubectl("get", "mdep", "-n", cfg.namespace, check=False).stdout
    console.print(f"$ kubectl get mdep -n {cfg.namespace}\n{out}")
    console.print(f"demo took {time.monotonic() - started:.0f} s of wall time")
    if args.down:
        left = local.stop(lc.state)
        console.print(
            "stopped the cluster, operator and gateway"
            if not left
            else f"[red]still running: {left}[/]"
        )
        return 1 if left or report.violations else 0
    console.print(
        next_steps(
            svc.gateway_url,
            str(lc.cluster.kubeconfig),
            cfg.namespace,
            cfg.chat_model,
            lc.cluster.kubectl_bin,
            cli_command(),
            svc.operator_metrics_url,
        )
    )
    return 1 if report.violations else 0


def _record(lc: local.LocalCluster, pid: int, admin_url: str) -> None:
    """The demo node's sim-kubelet stops with the cluster (`vllm-sleep dev down`)."""
    lc.state.pids[gpunode.PROCESS] = pid
    lc.state.endpoints[gpunode.PROCESS] = admin_url
    lc.state.save()


def step(console: Console, n: int, title: str) -> None:
    console.print(f"[bold cyan]{n}. {title}[/]")


def comparison(cfg: DemoConfig, report: Report) -> Table:
    """First token with sleep mode vs a plain Deployment's cold start: measured and simulated."""
    m = by_name(cfg.chat_model)
    ttft = report.chat.ttft or 0.0
    table = Table(title="Time to first token", title_justify="left", caption_justify="left")
    table.add_column("")
    table.add_column(f"measured here (x{cfg.time_scale:g})", justify="right")
    table.add_column("simulated H100", justify="right")
    table.add_row(
        "[green]sleep mode: wake + first token, via gateway[/]",
        fmt_seconds(ttft),
        "~" + fmt_seconds(real_equivalent_ttft(ttft, m, cfg.time_scale)),
    )
    table.add_row(
        "  of which the operator's wake (status.lastWakeSeconds)",
        fmt_seconds(report.last_wake),
        fmt_seconds(m.timings.wake) + " (engine)",
    )
    table.add_row(
        "[red]plain Deployment scaled to zero: cold start[/]",
        fmt_seconds(m.timings.load * cfg.time_scale) + " (model)",
        fmt_seconds(m.timings.load) + "+",
    )
    table.caption = (
        "H100 column: the simulator's timing model; for the first row the engine's part is "
        "scaled back up while the gateway/operator/apiserver part ran in real time. A cold start "
        "also needs pod scheduling and the image pull, not counted."
    )
    return table


def summary(cfg: DemoConfig, report: Report, tracker: Tracker) -> Table:
    table = Table(title_justify="left")
    table.add_column("MODEL", style="bold")
    table.add_column("applied -> asleep\n(measured)", justify="right")
    table.add_column("load + pre-warm\n(simulated H100)", justify="right")
    table.add_column("GPU memory\nawake -> asleep", justify="right")
    for m in MODELS:
        ready = tracker.first_seen.get((m.name, "Asleep"))
        t = m.timings
        awake, asleep = m.gpu_gib()
        table.add_row(
            m.name,
            fmt_seconds(ready),
            fmt_seconds(t.load + t.first_sleep),
            f"{awake:.1f} -> {asleep:.1f} GiB",
        )
    return table


def cli_command() -> str:
    """How the user can call the CLI: on PATH, or the venv path `make demo` used."""
    if shutil.which("vllm-sleep"):
        return "vllm-sleep"
    exe = Path(sys.argv[0])
    return str(exe) if exe.name == "vllm-sleep" else f"{sys.executable} -m vllm_sleep.cli"
