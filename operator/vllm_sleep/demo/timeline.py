"""The demo's timeline: what each model did and what the GPU held, over time (pure, unit-tested).

The demo samples a few times a second; each `Sample` holds every model's band (awake, asleep or
a transition) and the device's memory. From the samples and the swap phase's requests this
module derives the swaps (a wake that needed another model evicted first), which requests waited
for one, and the summary the demo prints. The PNG (`plot.py`) draws the same samples.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

# Bands, in drawing order. "sleeping" covers the drain before the engine's sleep.
BANDS = ("absent", "loading", "asleep", "waking", "awake", "sleeping", "failed")
TRANSITIONS = frozenset({"loading", "waking", "sleeping"})

_PHASE_BAND = {
    "Pending": "absent",
    "Loading": "loading",
    "Asleep": "asleep",
    "Waking": "waking",
    "Awake": "awake",
    "Draining": "sleeping",
    "Failed": "failed",
}
_ENGINE_TRANSITION_BAND = {"startup": "loading", "sleep": "sleeping", "wake": "waking"}


@dataclass(frozen=True)
class Engine:
    """One simulated engine as its `/_sim/state` reports it."""

    state: str  # loading | awake | sleeping | dead | failed
    transition: str | None = None  # startup | sleep | wake | reload | ...
    held_bytes: int = 0  # device memory it holds now


def band(phase: str | None, engine: Engine | None) -> str:
    """One model's band: the engine's own state decides awake or asleep (the ModelDeployment's
    status lags it by a write), the status adds what the engine cannot know (a drain before the
    sleep, a wake the agent is about to start, the pre-warm after the load)."""
    if engine is None or engine.state in ("dead", "failed"):
        return _PHASE_BAND.get(phase or "Pending", "absent")
    if engine.transition:
        return _ENGINE_TRANSITION_BAND.get(engine.transition, "waking")
    if engine.state == "loading":
        return "loading"
    if engine.state == "awake":
        return {"Draining": "sleeping", "Loading": "loading"}.get(phase or "", "awake")
    return "waking" if phase == "Waking" else "asleep"


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the timeline started
    bands: dict[str, str]
    held: dict[str, int] = field(default_factory=dict)  # model -> device bytes (simulator)
    used_bytes: int | None = None  # the device's used memory (simulator)
    committed_bytes: int | None = None  # the operator's accounting (GPUPool status)
    last_sleep: dict[str, float] = field(default_factory=dict)  # status.lastSleepSeconds
    last_wake: dict[str, float] = field(default_factory=dict)  # status.lastWakeSeconds


@dataclass(frozen=True)
class Interval:
    model: str
    band: str
    start: float
    end: float

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class Timeline:
    models: tuple[str, ...]
    device_bytes: int
    samples: list[Sample] = field(default_factory=list)
    marks: list[tuple[float, str]] = field(default_factory=list)  # phase starts, for the plot

    def add(self, sample: Sample) -> None:
        if self.samples and sample.at < self.samples[-1].at:
            raise ValueError("samples must be added in time order")
        self.samples.append(sample)

    def mark(self, at: float, label: str) -> None:
        self.marks.append((at, label))

    @property
    def end(self) -> float:
        return self.samples[-1].at if self.samples else 0.0

    def intervals(self, model: str) -> list[Interval]:
        """Runs of one band; each lasts until the first sample in another band (the last one
        until the last sample)."""
        out: list[Interval] = []
        current: tuple[str, float] | None = None
        for s in self.samples:
            b = s.bands.get(model, "absent")
            if current is None:
                current = (b, s.at)
            elif b != current[0]:
                out.append(Interval(model, current[0], current[1], s.at))
                current = (b, s.at)
        if current is not None:
            out.append(Interval(model, current[0], current[1], self.end))
        return out

    def band_at(self, model: str, at: float) -> str:
        """The band of the last sample at or before `at` ("absent" before the first)."""
        found = "absent"
        for s in self.samples:
            if s.at > at:
                break
            found = s.bands.get(model, "absent")
        return found

    def value_after(self, key: str, model: str, at: float) -> float | None:
        """The first `last_sleep`/`last_wake` of `model` reported after `at`: the first value
        sampled at or after `at` that differs from the one sampled before (the status still
        shows the previous sleep's duration until the new one is written)."""
        before: float | None = None
        for s in self.samples:
            got = getattr(s, key).get(model)
            if s.at < at:
                before = got
            elif got is not None and got != before:
                return float(got)
        return None


@dataclass(frozen=True)
class Request:
    """One request of the swap phase, timed by the client; times on the timeline's clock."""

    model: str
    sent: float
    first_token: float | None = None
    done: float | None = None
    status: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error and self.first_token is not None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.sent


@dataclass(frozen=True)
class Swap:
    evicted: str
    woken: str
    evicted_at: float  # the evicted model's awake band ended
    awake_at: float  # the woken model's awake band began
    request: Request  # the earliest request for `woken` that waited for this swap
    engine_seconds: float | None  # the evicted model's sleep + the woken model's wake (status)

    @property
    def ttft(self) -> float | None:
        return self.request.ttft


def swaps(tl: Timeline, requests: list[Request], slack: float = 0.5) -> list[Swap]:
    """Wakes that needed another model evicted first.

    A swap A -> B: B's awake band begins while a request for B, sent before A's awake band
    ended, still waits for its first token; A's band is the last awake band of another model
    that began before B's, ending at most `slack` (one or two samples) after it. An idle sleep
    followed later by a wake is not a swap: no request for B waited across A's end.
    """
    awake = sorted(
        (iv for m in tl.models for iv in tl.intervals(m) if iv.band == "awake"),
        key=lambda iv: iv.start,
    )
    out: list[Swap] = []
    for b in awake:
        before = [a for a in awake if a.model != b.model and a.start < b.start]
        if not before:
            continue
        a = max(before, key=lambda iv: iv.end)
        if a.end > b.start + slack:
            continue  # both awake at once: no eviction was needed
        waiting = [
            r
            for r in requests
            if r.model == b.model
            and r.sent <= a.end
            and r.first_token is not None
            and r.first_token >= b.start - slack
            and r.sent < b.start
        ]
        if not waiting:
            continue
        first = min(waiting, key=lambda r: r.sent)
        slept = tl.value_after("last_sleep", a.model, a.end)
        woke = tl.value_after("last_wake", b.model, b.start)
        engine = slept + woke if slept is not None and woke is not None else None
        out.append(Swap(a.model, b.model, a.end, b.start, first, engine))
    return out


def waited_for_swap(req: Request, found: list[Swap], slack: float = 0.5) -> bool:
    """The request was held while its model was swapped in."""
    if req.first_token is None:
        return False
    return any(
        s.woken == req.model and req.sent < s.awake_at <= req.first_token + slack for s in found
    )


@dataclass(frozen=True)
class Summary:
    requests: int
    succeeded: int
    swaps: int
    waited: int  # requests held for a swap
    ttft_swap_p50: float | None  # request -> first token, swap requests
    ttft_swap_max: float | None
    ttft_warm_p50: float | None  # request -> first token, model already awake
    engine_p50: float | None  # sleep(A) + wake(B) by the engines (operator-measured calls)
    peak_used_bytes: int | None
    device_bytes: int
    violations: int
    ooms: int
    to_sleeping: int  # requests that reached a sleeping (or transitioning) engine
    max_awake: int  # most models awake in one sample


OOM_KINDS = frozenset({"wake_oom", "startup_oom", "host_oom"})
SLEEPING_KINDS = frozenset({"request_while_asleep", "request_during_transition"})


def summarize(
    tl: Timeline, requests: list[Request], violations: list[dict[str, object]]
) -> tuple[Summary, list[Swap]]:
    found = swaps(tl, requests)
    held = [r for r in requests if waited_for_swap(r, found)]
    held_ids = {id(r) for r in held}
    warm = [
        r.ttft
        for r in requests
        if r.ok and id(r) not in held_ids and tl.band_at(r.model, r.sent) == "awake"
    ]
    swap_ttfts = [r.ttft for r in held if r.ttft is not None]
    engine = [s.engine_seconds for s in found if s.engine_seconds is not None]
    used = [s.used_bytes for s in tl.samples if s.used_bytes is not None]
    kinds = [str(v.get("kind", "")) for v in violations]
    summary = Summary(
        requests=len(requests),
        succeeded=sum(r.ok for r in requests),
        swaps=len(found),
        waited=len(held),
        ttft_swap_p50=_median(swap_ttfts),
        ttft_swap_max=max(swap_ttfts) if swap_ttfts else None,
        ttft_warm_p50=_median([t for t in warm if t is not None]),
        engine_p50=_median(engine),
        peak_used_bytes=max(used) if used else None,
        device_bytes=tl.device_bytes,
        violations=len(violations),
        ooms=sum(k in OOM_KINDS for k in kinds),
        to_sleeping=sum(k in SLEEPING_KINDS for k in kinds),
        max_awake=max((sum(b == "awake" for b in s.bands.values()) for s in tl.samples), default=0),
    )
    return summary, found


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None
