"""The demo's steps against any cluster running the operator and the gateway.

Each step takes the cluster, a console and the config, so the e2e test runs the same code against
the test session's cluster (with a quiet console) that `vllm-sleep demo` runs on the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.live import Live

from ..api.duration import parse_duration
from ..api.model_status import STATUS_WRITE_WINDOW_SECONDS
from .chat import ChatResult, ChatThread, Event
from .kube import Cluster, DemoError
from .models import (
    CHAT_MODEL,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_TIME_SCALE,
    MODELS,
    NAMESPACE,
    POOL,
    manifest,
    pool_manifest,
)
from .record import Recorder
from .timeline import Request, Summary, Swap, summarize
from .track import Tracker
from .traffic import Traffic, schedule
from .view import live_view

POLL_SECONDS = 0.25


@dataclass
class DemoConfig:
    namespace: str = NAMESPACE
    time_scale: float = DEFAULT_TIME_SCALE  # total: the sim-kubelet's scale x the engine's
    idle_timeout: str = DEFAULT_IDLE_TIMEOUT
    chat_model: str = CHAT_MODEL.name
    prompt: str = "Why does a sleeping model answer so quickly?"
    max_tokens: int = 20  # the simulator's text repeats after 20 words
    wait_idle: bool = True  # False: ask for the sleep (`vllm-sleep sleep`) instead of waiting
    load_timeout: float = 240.0
    pool: str = POOL
    swap_seconds: float = 15.0  # how long the swap phase sends requests
    swap_rate: float = 1.5  # requests a second, on average
    swap_tokens: int = 4
    seed: int = 11

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in MODELS)

    @property
    def idle_seconds(self) -> float:
        return parse_duration(self.idle_timeout).total_seconds()


@dataclass
class Report:
    """What happened, for the summary (and the e2e test's assertions)."""

    ready_after: float | None = None  # apply -> every model Asleep (pre-warmed)
    chat: ChatResult = field(default_factory=ChatResult)
    phases_during_request: list[str] = field(default_factory=list)
    last_wake: float | None = None  # the operator's measured wake (status.lastWakeSeconds)
    asleep_again_after: float | None = None  # last token -> Asleep
    violations: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)  # the swap phase's
    swaps: list[Swap] = field(default_factory=list)
    summary: Summary | None = None


def deploy(cluster: Cluster, cfg: DemoConfig, host_scale: float) -> list[str]:
    cluster.ensure_namespace(cfg.namespace)
    docs = [pool_manifest(cfg.pool)] + [
        manifest(
            m,
            cfg.namespace,
            total_scale=cfg.time_scale,
            host_scale=host_scale,
            idle_timeout=cfg.idle_timeout,
            pool=cfg.pool,
        )
        for m in MODELS
    ]
    return cluster.apply(docs).splitlines()


def watch_until(
    cluster: Cluster,
    cfg: DemoConfig,
    console: Console,
    done: Callable[[Tracker], bool],
    *,
    title: str,
    timeout: float,
    footer: Callable[[Tracker], str] = lambda _t: "",
    tracker: Tracker | None = None,
    recorder: Recorder | None = None,
) -> Tracker:
    """Poll the models (and the device, with a recorder) and redraw until `done`; fail on a
    Failed model or timeout."""
    tracker = tracker or Tracker(cfg.names, time.monotonic())
    deadline = time.monotonic() + timeout

    def render() -> Any:
        device = recorder.last if recorder else None
        return live_view(tracker, title, cfg.time_scale, footer(tracker), device)

    def look() -> None:
        now = time.monotonic()
        tracker.update(cluster.models(cfg.namespace), now)
        if recorder is not None:
            recorder.poll(tracker, now)

    try:
        with Live(render(), console=console, refresh_per_second=8, transient=False) as live:
            while True:
                look()
                live.update(render())
                if done(tracker):
                    # One more look for the last frame: `done` may have been decided by an event
                    # (the first token) newer than the snapshot just drawn.
                    look()
                    live.update(render())
                    return tracker
                if tracker.failed():
                    raise DemoError(
                        f"model(s) failed: {tracker.failed()}; see `kubectl describe mdep"
                        f" -n {cfg.namespace}` and the operator log"
                    )
                if time.monotonic() > deadline:
                    phases = {n: v.phase for n, v in tracker.views.items()}
                    raise DemoError(
                        f"timed out after {timeout:.0f}s: {title}; phases now {phases}. "
                        f"Pending: are GPUs free (`kubectl get pods -A -o wide`)? "
                        f"Otherwise see the operator log."
                    )
                time.sleep(POLL_SECONDS)
    finally:
        if not console.is_terminal:  # Live ends its last line itself only on a terminal
            console.line()


def wait_prewarmed(
    cluster: Cluster,
    cfg: DemoConfig,
    console: Console,
    report: Report,
    recorder: Recorder | None = None,
) -> Tracker:
    """Loading -> pre-warm (first sleep) -> Asleep, for every model (one at a time: start-up on
    a shared device is serialised)."""
    t0 = time.monotonic()
    _mark(recorder, "load + pre-warm")
    tracker = watch_until(
        cluster,
        cfg,
        console,
        lambda t: t.all_in("Asleep"),
        title="Models loading, pre-warming, going to sleep",
        timeout=cfg.load_timeout,
        footer=lambda t: f"  {time.monotonic() - t0:.1f} s since apply",
        recorder=recorder,
    )
    report.ready_after = time.monotonic() - t0
    return tracker


def request_through_gateway(
    cluster: Cluster,
    cfg: DemoConfig,
    console: Console,
    gateway_url: str,
    report: Report,
    recorder: Recorder | None = None,
) -> ChatResult:
    """Send one streaming chat to the sleeping model: the table shows the wake while the gateway
    holds the request, then the tokens stream in."""
    chat = ChatThread(gateway_url, cfg.chat_model, cfg.prompt, cfg.max_tokens)
    first: list[Event] = []
    t0 = time.monotonic()

    def first_token(t: Tracker) -> bool:
        phase = t.phase(cfg.chat_model)
        if phase and (
            not report.phases_during_request or report.phases_during_request[-1] != phase
        ):
            report.phases_during_request.append(phase)
        if not first and not chat.events.empty():
            first.append(chat.events.get())
        return bool(first)

    _mark(recorder, "one request")
    chat.start()
    watch_until(
        cluster,
        cfg,
        console,
        first_token,
        title=f"POST /v1/chat/completions  model={cfg.chat_model}  (gateway holds it while "
        "the model wakes)",
        timeout=cfg.load_timeout,
        footer=lambda _t: (
            "" if first else f"  waiting for the first token: {time.monotonic() - t0:.1f} s"
        ),
        recorder=recorder,
    )
    event = first[0]
    if event.kind == "done":  # no token at all: an error answer
        chat.join()
        raise DemoError(f"chat request failed: HTTP {chat.result.status} {chat.result.error}")
    console.print(f"[bold green]first token after {event.at:.2f} s[/] (including the wake)\n")
    console.print("[dim]assistant (the simulator's text):[/]", end="")
    while event.kind == "token":
        console.print(event.text, end="", soft_wrap=True, highlight=False)
        event = chat.events.get(timeout=120)
    console.print("\n")
    chat.join()
    report.chat = chat.result
    if chat.result.error:
        raise DemoError(f"chat stream broke: {chat.result.error}")
    report.last_wake = _reported_wake(cluster, cfg)
    return chat.result


def _reported_wake(cluster: Cluster, cfg: DemoConfig, timeout: float = 15.0) -> float | None:
    """The operator's measured wake (status.lastWakeSeconds) once the status says it: the
    answer can come first (the agent releases the request as the engine wakes, and a model's
    status writes are coalesced, docs/operator.md)."""
    deadline = time.monotonic() + timeout
    while True:
        obj = cluster.models(cfg.namespace).get(cfg.chat_model) or {}
        wake = (obj.get("status") or {}).get("lastWakeSeconds")
        if wake is not None or time.monotonic() > deadline:
            return float(wake) if wake is not None else None
        time.sleep(0.2)


def swap_phase(
    cluster: Cluster,
    cfg: DemoConfig,
    console: Console,
    gateway_url: str,
    report: Report,
    recorder: Recorder,
) -> list[Request]:
    """Requests hopping between the models for `swap_seconds`: each wake of a sleeping model
    needs the awake one evicted first (the operator drains it, sleeps it, waits for its memory,
    then wakes the target; the gateway holds the request meanwhile)."""
    plan = schedule(cfg.names, cfg.swap_seconds, cfg.swap_rate, cfg.seed)
    traffic = Traffic(gateway_url, plan, recorder.origin, max_tokens=cfg.swap_tokens)
    _mark(recorder, "swaps")
    traffic.start()

    def footer(_t: Tracker) -> str:
        got = list(traffic.requests)
        ok = sum(r.ok for r in got)
        return (
            f"  {len(got)}/{len(plan)} answered ({ok} ok), {traffic.in_flight} in flight; "
            f"GPU {recorder.timeline.device_bytes / 2**30:.0f} GiB: one model awake at a time"
        )

    watch_until(
        cluster,
        cfg,
        console,
        lambda _t: traffic.done,
        title=f"Swaps: {len(plan)} requests over {cfg.swap_seconds:g} s, hopping between models",
        timeout=cfg.swap_seconds + cfg.load_timeout,
        footer=footer,
        recorder=recorder,
    )
    report.requests = sorted(traffic.requests, key=lambda r: r.sent)
    failed = [r for r in report.requests if not r.ok]
    if failed:
        raise DemoError(
            f"{len(failed)} of {len(plan)} swap-phase requests failed, e.g. "
            f"{failed[0].model}: HTTP {failed[0].status} {failed[0].error}"
        )
    return report.requests


def back_to_sleep(
    cluster: Cluster,
    cfg: DemoConfig,
    console: Console,
    report: Report,
    recorder: Recorder | None = None,
) -> None:
    """Idle for idleTimeout -> Draining -> Asleep (or an explicit `vllm-sleep sleep`), until
    every model sleeps."""
    t0 = time.monotonic()
    # The swap phase's last wakes may not be in the statuses yet (coalesced writes).
    time.sleep(STATUS_WRITE_WINDOW_SECONDS + 0.5)
    awake = [n for n, v in cluster.models(cfg.namespace).items() if _phase(v) != "Asleep"]
    awake = [n for n in cfg.names if n in awake] or [cfg.chat_model]
    _mark(recorder, "idle")
    if not cfg.wait_idle:
        for name in awake:
            cluster.request_sleep(cfg.namespace, name)

    def footer(_t: Tracker) -> str:
        elapsed = time.monotonic() - t0
        if not cfg.wait_idle:
            return f"  `vllm-sleep sleep {' '.join(awake)}` requested {elapsed:.1f} s ago"
        left = cfg.idle_seconds - elapsed
        if left > 0:
            return (
                f"  idleTimeout {cfg.idle_timeout}: sleeps in about {left:.0f} s (no request since)"
            )
        return f"  idle for {elapsed:.0f} s: draining and sleeping"

    watch_until(
        cluster,
        cfg,
        console,
        lambda t: t.all_in("Asleep"),
        title=f"{', '.join(awake)} idle: back to sleep",
        timeout=cfg.idle_seconds + 120,
        footer=footer,
        recorder=recorder,
    )
    report.asleep_again_after = time.monotonic() - t0


def check_violations(
    cluster: Cluster,
    cfg: DemoConfig,
    report: Report,
    recorder: Recorder | None = None,
    since: float | None = None,
) -> None:
    """Contract violations of the demo's engines: those on the demo node (the recorder's
    sim-kubelet) and any on the cluster's own nodes; with `since` (unix seconds), only those
    recorded from then on (a sim-kubelet keeps every violation since it started, so a rerun on
    a reused cluster would report an earlier run's, or the user's own experiments', as its own)."""
    found = recorder.violations() if recorder else []
    if cluster.kubelet_admin_url:
        found += cluster.violations(cfg.namespace)
    report.violations = recorded_since(found, since)
    if recorder is not None:
        report.summary, report.swaps = summarize(
            recorder.timeline, report.requests, report.violations
        )


def recorded_since(violations: list[dict[str, Any]], since: float | None) -> list[dict[str, Any]]:
    """The violations recorded at or after `since` (all of them when None; one without a time
    is kept: it cannot be shown to be older)."""
    if since is None:
        return violations
    return [v for v in violations if not isinstance(v.get("at"), int | float) or v["at"] >= since]


def _mark(recorder: Recorder | None, label: str) -> None:
    if recorder is not None:
        recorder.timeline.mark(time.monotonic() - recorder.origin, label)


def _phase(obj: dict[str, Any]) -> str:
    return str((obj.get("status") or {}).get("phase") or "Pending")
