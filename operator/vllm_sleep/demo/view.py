"""Rich renderables for the demo: the live model table, the timing model, the summary."""

from __future__ import annotations

import shutil

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .models import MODELS, DemoModel, fmt_seconds
from .track import ModelView, Tracker

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
            f"{rep.node}/{rep.device}" if rep and rep.device != "-" else (rep.node if rep else "-"),
            fmt_seconds(view.last_sleep),
            explain(view),
        )
    return table


def transitions_text(tracker: Tracker, last: int = 8) -> Text:
    text = Text()
    for t in tracker.transitions[-last:]:
        text.append(f"  +{t.at:5.1f}s  ", style="dim")
        text.append(f"{t.model:<11}", style="bold")
        text.append(" " if t.before == "-" else f" {t.before} -> ")  # "-": first sighting
        text.append(t.after, style=PHASE_STYLE.get(t.after.split(" ", 1)[0], ""))
        text.append("\n")
    return text


def live_view(tracker: Tracker, title: str, scale: float, footer: str = "") -> Group:
    parts: list[Table | Text] = [models_table(tracker, title, scale), transitions_text(tracker)]
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
    gateway_url: str, kubeconfig: str, namespace: str, model: str, kubectl: str, cli: str
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
        ("kubectl get mdep -A", "STATE / AWAKE columns"),
        (f"{cli} status -A", ""),
        (f"{cli} wake qwen-7b -n {namespace} --wait", "or just send it a request"),
        (f"{cli} sleep {model} -n {namespace} --wait", ""),
        (curl, ""),
        ("cat deploy/examples/demo/*.yaml", "what the demo applied"),
        (f"{cli} dev down", "stops the cluster, the operator and the gateway"),
    ]
    width = max(len(cmd) for cmd, note in rows if note)
    lines = [f"{cmd:<{width}}  # {note}" if note else cmd for cmd, note in rows]
    return Panel("\n".join(lines), title="Try next", title_align="left", border_style="green")
