"""Contract violations: things the operator must never make vLLM do. Tests assert there are none."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

ViolationKind = Literal[
    "request_while_asleep",  # an inference request reached a sleeping engine
    "request_during_transition",  # ... or one that was going to sleep or waking
    "inflight_at_sleep",  # /sleep arrived while requests were running (no drain)
    "wake_oom",  # /wake_up could not remap: a neighbour holds the memory
    "startup_oom",  # startup: free memory below the requested share
    "profiling_race",  # a neighbour changed memory during this engine's startup profiling
    "concurrent_transition",  # two engines changed memory on one GPU at the same time
    "garbage_weights",  # level-2 wake without reload_weights, then served
    "engine_crash",  # the engine process died (legacy request while asleep, ...)
    "host_oom",  # level-1 offload exceeded the host's pinned-memory limit
    "draft_model_lost",  # served after 0.34's level 2 discarded the speculative draft model
]
KINDS: tuple[str, ...] = ViolationKind.__args__  # type: ignore[attr-defined]


class Violation(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: ViolationKind
    message: str
    at: float  # unix time
    engine: str  # "model@host:port"
