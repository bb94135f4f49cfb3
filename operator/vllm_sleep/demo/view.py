"""Rich renderables for the demo: the live model table, the timing model, the summary."""

from __future__ import annotations

import shutil

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .models import MODELS, POOL_NODE, DemoModel, fmt_seconds
from .record import DeviceView
from .timeline import Engine, Summary, Swap
from .track import ModelView, Replica, Tracker

GiB = 2**30
MODEL_COLORS = ("green", "magenta", "yellow", "cyan", "red", "blue")
BAR_WIDTH = 48

PHASE_STYLE = {
    "Pending": "dim",
    "Loading": "yellow",
    "Asleep": "bold blue",
    "Waking": "bold magenta",
    "Awake": "bold green",
    "Draining": "cyan",
    "Failed": "bold red",
}


def explain(view: ModelView) -> str:
    """One line of what is happening, for a viewer who does not know the state machine."""
    states = {r.state for r in view.replicas}
    # No sleep finished yet: this one is the pre-warm (status calls it Draining or Loading).
    if view.last_sleep is None and states & {"Loaded", "Draining", "Sleeping"}:
        return "pre-warm: the slow first sleep, off the request path"
    if view.phase == "Loading":
        return "vLLM loads the weights onto the GPU"
    return {
        "Pending": "pod being created or scheduled",
        "Asleep": "GPU memory free, weights in host RAM",
        "Waking": "request held; weights back to the GPU",
        "Awake": "serving requests",
        "Draining": "idle: drain in-flight requests, sleep",
        "Failed": "see `kubectl describe mdep` and Events",
    }.get(view.phase, "")


def models_table(tracker: Tracker, title: str, scale: float) -> Table:
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("MODEL", style="bold")
    table.add_column("PHASE")
    table.add_column("REPLICA")
    table.add_column("STATE")
    table.add_column("NODE / GPU")
    table.add_column(f"LAST SLEEP\n(measured, x{scale:g} time)", justify="right")
    table.add_column("", style="dim")
    for name in tracker.names:
        view = tracker.views.get(name)
        if view is None:
            table.add_row(name, Text("not created", "dim"), "", "", "", "", "")
            continue
        rep = view.replicas[0] if view.replicas else None
        table.add_row(
            name,
            Text(view.phase, PHASE_STYLE.get(view.phase, "")),
            rep.pod if rep else "-",
            rep.state if rep else "-",
            where(rep) if rep else "-",
            fmt_seconds(view.last_sleep),
            explain(view),
        )
    return table


def where(rep: Replica) -> str:
    """node/device; a pooled replica's device id already names its node."""
    if rep.device == "-":
        return rep.node
    return rep.device if rep.device.startswith(f"{rep.node}/") else f"{rep.node}/{rep.device}"


def transitions_text(tracker: Tracker, last: int = 8) -> Text:
    text = Text()
    for t in tracker.transitions[-last:]:
        text.append(f"  +{t.at:5.1f}s  ", style="dim")
        text.append(f"{t.model:<11}", style="bold")
        text.append(" " if t.before == "-" else f" {t.before} -> ")  # "-": first sighting
        text.append(t.after, style=PHASE_STYLE.get(t.after.split(" ", 1)[0], ""))
        text.append("\n")
    return text


def memory_bar(held: dict[str, int], names: tuple[str, ...], total: int) -> Text:
    """The device as a bar: each model's bytes in its colour, free memory dotted."""
    text = Text()
    cells = 0
    for i, name in enumerate(names):
        n = round(BAR_WIDTH * held.get(name, 0) / total) if total else 0
        n = min(n, BAR_WIDTH - cells)
        text.append("█" * n, style=MODEL_COLORS[i % len(MODEL_COLORS)])
        cells += n
    text.append("·" * (BAR_WIDTH - cells), style="dim")
    return text


ENGINE_WORDS = {"sleeping": "asleep", "sleep": "going to sleep", "wake": "waking"}


def engine_words(engine: Engine | None) -> str:
    """The simulator's engine state in the demo's words (its "sleeping" means asleep)."""
    if engine is None:
        return "not started"
    what = engine.transition or engine.state
    return {"startup": "loading", **ENGINE_WORDS}.get(what, what)


def device_text(device: DeviceView, names: tuple[str, ...]) -> Text:
    text = Text(f"GPU {POOL_NODE}/gpu-0  ", style="bold")
    text.append_text(memory_bar(device.held, names, device.total_bytes))
    used = "-" if device.used_bytes is None else f"{device.used_bytes / GiB:.1f}"
    text.append(f"  {used} / {device.total_bytes / GiB:.0f} GiB used (simulator)")
    if device.committed_bytes is not None:
        text.append(f", {device.committed_bytes / GiB:.1f} GiB committed (operator)", style="dim")
    text.append("\n  ")
    for i, name in enumerate(names):
        engine = device.engines.get(name)
        text.append("■ ", style=MODEL_COLORS[i % len(MODEL_COLORS)])
        state = engine_words(engine)
        text.append(f"{name} {device.held.get(name, 0) / GiB:.1f} GiB ({state})   ")
    return text


def live_view(
    tracker: Tracker,
    title: str,
    scale: float,
    footer: str = "",
    device: DeviceView | None = None,
) -> Group:
    parts: list[Table | Text] = [models_table(tracker, title, scale)]
    if device is not None:
        parts.append(device_text(device, tracker.names))
    parts.append(transitions_text(tracker))
    if footer:
        parts.append(Text(footer, style="italic"))
    return Group(*parts)


def timing_model_table(scale: float, models: tuple[DemoModel, ...] = MODELS) -> Table:
    """What a real H100 would take: the simulator's timing model, before time scaling."""
    table = Table(
        title=f"Simulated GPU timings (H100 timing model; this demo runs them at x{scale:g})",
        title_justify="left",
    )
    table.add_column("MODEL", style="bold")
    table.add_column("WEIGHTS", justify="right")
    table.add_column("cold start\n(load)", justify="right", style="red")
    table.add_column("first sleep\n(pre-warm)", justify="right")
    table.add_column("later sleeps", justify="right")
    table.add_column("wake", justify="right", style="green")
    for m in models:
        t = m.timings
        table.add_row(
            m.name,
            m.weights,
            fmt_seconds(t.load),
            fmt_seconds(t.first_sleep),
            fmt_seconds(t.sleep),
            fmt_seconds(t.wake),
        )
    return table


def next_steps(
    gateway_url: str,
    kubeconfig: str,
    namespace: str,
    model: str,
    kubectl: str,
    cli: str,
    operator_metrics_url: str = "",
) -> Panel:
    curl = (
        f"curl -N {gateway_url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
        f'    -d \'{{"model": "{model}", "stream": true, '
        f'"messages": [{{"role": "user", "content": "hi"}}]}}\''
    )
    rows: list[tuple[str, str]] = [(f"export KUBECONFIG={kubeconfig}", "")]
    if shutil.which("kubectl") is None:  # the build cache's kubectl is not on PATH
        rows.append((f"alias kubectl={kubectl}", ""))
    rows += [
        ("kubectl get mdep -A", "STATE / READY / AWAKE columns"),
        (f"{cli} status -A", "models, and the GPU's devices and memory"),
        ("kubectl get gpupool demo-gpu -o yaml", "status.deviceStates: who is awake"),
        (f"{cli} wake qwen-7b -n {namespace} --wait", "or just send it a request"),
        (f"{cli} sleep {model} -n {namespace} --wait", ""),
        (curl, ""),
        (f"curl -s {gateway_url}/metrics | grep ^vllm_sleep", "the gateway's metrics"),
    ]
    if operator_metrics_url:
        rows.append(
            (
                f"curl -s {operator_metrics_url}/metrics | grep ^vllm_sleep",
                "the operator's: transitions, phases, pool swaps",
            )
        )
    rows += [
        ("cat deploy/examples/demo/*.yaml", "what the demo applied"),
        (f"{cli} dev down", "stops the cluster, the operator and the gateway"),
    ]
    width = max(len(cmd) for cmd, note in rows if note)
    lines = [f"{cmd:<{width}}  # {note}" if note else cmd for cmd, note in rows]
    return Panel("\n".join(lines), title="Try next", title_align="left", border_style="green")


def swap_summary(summary: Summary, found: list[Swap], scale: float, last: int = 6) -> Group:
    """What the swap phase did: the totals, then the last few swaps one by one."""
    totals = Table(title="Swaps on one GPU", title_justify="left", show_header=False)
    totals.add_column("", style="bold")
    totals.add_column("", justify="right")
    totals.add_column("", style="dim")
    ok = "bold green"
    totals.add_row("swaps (evict one model, wake another)", str(summary.swaps), "")
    totals.add_row(
        "request -> first token, swap (median / max)",
        f"{fmt_seconds(summary.ttft_swap_p50)} / {fmt_seconds(summary.ttft_swap_max)}",
        "held by the gateway while the operator swapped",
    )
    totals.add_row(
        "  of which the engines' sleep + wake (median)",
        fmt_seconds(summary.engine_p50),
        f"the agents' calls: status.lastSleepSeconds + lastWakeSeconds, x{scale:g} time",
    )
    totals.add_row(
        "request -> first token, model already awake (median)",
        fmt_seconds(summary.ttft_warm_p50),
        "",
    )
    totals.add_row(
        "requests that waited for a swap",
        f"{summary.waited} of {summary.requests}",
        f"{summary.succeeded} answered 200",
    )
    peak = "-" if summary.peak_used_bytes is None else f"{summary.peak_used_bytes / GiB:.1f}"
    totals.add_row(
        "peak GPU memory used", f"{peak} / {summary.device_bytes / GiB:.0f} GiB", "simulator"
    )
    totals.add_row("most models awake at once", str(summary.max_awake), "")
    totals.add_row(
        "requests that reached a sleeping engine",
        Text(str(summary.to_sleeping), ok if not summary.to_sleeping else "bold red"),
        "legacy vLLM: one would crash the engine",
    )
    totals.add_row(
        "GPU out-of-memory errors",
        Text(str(summary.ooms), ok if not summary.ooms else "bold red"),
        "startup, wake or host",
    )
    totals.add_row(
        "contract violations, all kinds",
        Text(str(summary.violations), ok if not summary.violations else "bold red"),
        "sim-kubelet /violations",
    )
    each = Table(title=f"Last {min(last, len(found))} swaps", title_justify="left")
    each.add_column("at", justify="right")
    each.add_column("evicted -> woken")
    each.add_column("request -> first token", justify="right", style="green")
    each.add_column("engine sleep + wake", justify="right")
    for s in found[-last:]:
        each.add_row(
            f"+{s.awake_at:.1f}s",
            f"{s.evicted} -> {s.woken}",
            fmt_seconds(s.ttft),
            fmt_seconds(s.engine_seconds),
        )
    return Group(totals, each) if found else Group(totals)
