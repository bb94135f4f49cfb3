"""The settled state of an engine after each kind of step, and a pool after a step.

Used to check a plan step by step (and by the operator to predict what it should observe);
never a substitute for observing: the next plan is derived from what the agents report.
"""

from __future__ import annotations

from dataclasses import replace

from .model import Engine, EngineState, Pool
from .plan import Sleep, Start, Step, Wake


def after_sleep(e: Engine, level: int) -> Engine:
    return replace(
        e,
        state=EngineState.ASLEEP,
        sleep_level=level,
        # vLLM >= 0.34 keeps the pinned backup of a level-1 sleep for the engine's life.
        holds_backup=e.holds_backup or (level == 1 and e.keeps_backup),
        inflight=0,
    )


def after_wake(e: Engine, now: float) -> Engine:
    return replace(
        e,
        state=EngineState.AWAKE,
        sleep_level=None,
        holds_backup=e.holds_backup and e.keeps_backup,
        woken_at=now,
    )


def after_start(e: Engine, device: str, now: float) -> Engine:
    # Counted awake (its whole share) until the pre-warm sleep is observed.
    return replace(e, device=device, state=EngineState.AWAKE, sleep_level=None, woken_at=now)


def apply(pool: Pool, step: Step, now: float) -> Pool:
    e = pool.engine_by_replica[step.replica]
    if isinstance(step, Sleep):
        return pool.replace(after_sleep(e, step.level))
    if isinstance(step, Wake):
        return pool.replace(after_wake(e, now))
    if isinstance(step, Start):
        return pool.replace(after_start(e, step.device, now))
    raise TypeError(f"unknown step {step!r}")
