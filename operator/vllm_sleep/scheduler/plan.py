"""What the scheduler answers: an ordered plan of steps on one device, or a refusal with why."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True)
class Sleep:
    """Drain and sleep `replica` at `level` to make room (an eviction)."""

    replica: str
    level: int
    reason: str  # e.g. "priority 10, idle 4m, to wake ns/qwen-32b-0"


@dataclass(frozen=True)
class Wake:
    replica: str


@dataclass(frozen=True)
class Start:
    """Create the replica's engine on `device` (it loads, then sleeps once: the pre-warm)."""

    replica: str
    device: str


Step = Sleep | Wake | Start


@dataclass(frozen=True)
class Plan:
    """Steps for one device, run one at a time: each starts only once the previous settled."""

    replica: str  # the replica the plan is for (woken or started last)
    device: str
    steps: tuple[Step, ...]

    @property
    def evictions(self) -> tuple[Sleep, ...]:
        return tuple(s for s in self.steps if isinstance(s, Sleep))


class RefusalKind(StrEnum):
    NEVER = "Never"  # no eviction can ever make room: nothing is evicted for it
    NOT_NOW = "NotNow"  # busy device, protected neighbours, full pool: retry when state changes


@dataclass(frozen=True)
class Refusal:
    replica: str
    kind: RefusalKind
    reason: str


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def age(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 else f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"
