"""Follow ModelDeployments over time from status snapshots (pure: no I/O, unit-tested).

The demo polls the API a few times a second; this turns the snapshots into what a viewer wants
to see: each model's phase and replica states, and the transitions with their time offsets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Replica:
    pod: str
    node: str
    device: str
    state: str
    level: int | None


@dataclass(frozen=True)
class ModelView:
    name: str
    phase: str
    awake: str
    replicas: tuple[Replica, ...]
    last_sleep: float | None
    last_wake: float | None
    # False until the operator has reconciled the latest spec: right after `kubectl apply`
    # changed it, the status still describes the old pods (e.g. "Asleep" before a replacement).
    current: bool = True

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> ModelView:
        status = obj.get("status") or {}
        reps = tuple(
            Replica(
                pod=str(r.get("pod") or "-"),
                node=str(r.get("node") or "-"),
                device=str(r.get("device") or "-"),
                state=str(r.get("state") or "-"),
                level=r.get("level"),
            )
            for r in status.get("replicas") or []
        )
        return cls(
            name=obj["metadata"]["name"],
            phase=str(status.get("phase") or "Pending"),
            awake=str(status.get("awake") or "-"),
            replicas=reps,
            last_sleep=_float(status.get("lastSleepSeconds")),
            last_wake=_float(status.get("lastWakeSeconds")),
            current=(status.get("observedGeneration") or 0)
            >= (obj["metadata"].get("generation") or 0),
        )

    @property
    def state_key(self) -> str:
        """Phase plus replica states: a change in either is a transition worth showing."""
        states = ",".join(r.state for r in self.replicas)
        return f"{self.phase}[{states}]"


@dataclass(frozen=True)
class Transition:
    at: float  # seconds since the tracker started
    model: str
    before: str
    after: str


@dataclass
class Tracker:
    names: tuple[str, ...]
    started: float
    views: dict[str, ModelView] = field(default_factory=dict)
    transitions: list[Transition] = field(default_factory=list)
    # first time each model was seen in each phase: for "loaded in X s" summaries
    first_seen: dict[tuple[str, str], float] = field(default_factory=dict)

    def update(self, objects: dict[str, dict[str, Any]], now: float) -> None:
        at = now - self.started
        for name in self.names:
            obj = objects.get(name)
            if obj is None:
                continue
            view = ModelView.from_object(obj)
            old = self.views.get(name)
            if old is None or old.state_key != view.state_key:
                before = _describe(old) if old else "-"
                self.transitions.append(Transition(at, name, before, _describe(view)))
            self.first_seen.setdefault((name, view.phase), at)
            self.views[name] = view

    def all_in(self, phase: str) -> bool:
        return len(self.views) == len(self.names) and all(
            v.phase == phase and v.current for v in self.views.values()
        )

    def phase(self, name: str) -> str | None:
        """The model's phase, None while unknown or not yet reconciled after a spec change."""
        view = self.views.get(name)
        return view.phase if view and view.current else None

    def failed(self) -> list[str]:
        return [n for n, v in self.views.items() if v.phase == "Failed"]


def _describe(view: ModelView) -> str:
    states = "/".join(r.state for r in view.replicas)
    if view.last_sleep is None and {"Draining", "Sleeping"} & {r.state for r in view.replicas}:
        # No sleep finished yet, so this is the pre-warm (status shows it as Draining).
        return f"{view.phase} (pre-warm sleep)"
    if not states or states == view.phase:
        return view.phase
    return f"{view.phase} ({states})"


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
