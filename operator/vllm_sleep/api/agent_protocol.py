"""The agent's control API as both sides see it: states, the `/state` report, query parameters.

The agent (`agent/control.py`) builds its JSON from `StateReport`; the operator
(`controller/agents.py`) parses the same model. docs/interfaces.md ("Agent control API") is the
prose of this module.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field


class AgentState(StrEnum):
    """The engine's state as its agent reports it (docs/agent.md has the diagram)."""

    LOADING = "loading"  # vLLM not answering /health yet (model load), state unknown
    AWAKE = "awake"  # confirmed awake: inference requests are forwarded
    DRAINING = "draining"  # sleep requested: new requests held, waiting for in-flight ones
    SLEEPING = "sleeping"  # vLLM /sleep running
    ASLEEP = "asleep"  # confirmed by /is_sleeping
    WAKING = "waking"  # vLLM wake sequence running
    FAILED = "failed"  # vLLM unhealthy or its state unknowable; re-detected when it recovers
    # Never sent by an agent: the operator's reading of a pod whose agent does not answer (pod
    # starting, agent restarting, network) or answers something it cannot parse.
    UNREACHABLE = "unreachable"


REPORTED_STATES: Final = tuple(s for s in AgentState if s is not AgentState.UNREACHABLE)
TRANSITIONING: Final = frozenset({AgentState.DRAINING, AgentState.SLEEPING, AgentState.WAKING})

# Control API paths and query parameters.
PATH_STATE: Final = "/state"
PATH_SLEEP: Final = "/sleep"
PATH_WAKE: Final = "/wake"
PARAM_WAIT: Final = "wait"  # GET /state: long-poll at most this many seconds...
PARAM_VERSION: Final = "version"  # ...until the report's version differs from this one
MAX_WAIT: Final = 300.0  # longer long-polls are cut to this: they only tie up a connection
PARAM_LEVEL: Final = "level"  # POST /sleep: one of SLEEP_LEVELS
# 0: KV-only (pause, then /release_kv_cache_memory; the weights stay; vLLM ≥0.31, else 400).
# 1: weights offloaded to host memory. 2: weights discarded, reloaded on wake.
SLEEP_LEVELS: Final = (0, 1, 2)
PARAM_DRAIN_TIMEOUT: Final = "drain_timeout"  # POST /sleep: seconds to wait for in-flight work
# POST /sleep: why. REASON_IDLE (the idle timer ran out) is refused with 409 while requests are
# in flight: the operator's view of idleness may be a long-poll old, the agent's is exact.
# Absent or anything else: a forced sleep (eviction, explicit), which drains.
PARAM_REASON: Final = "reason"
REASON_IDLE: Final = "idle"
# POST /sleep: "1" grants the agent this sleep's wake: when a request is held while the engine
# is asleep, the agent wakes it at once instead of waiting for the operator (docs/agent.md,
# "Wake on request"). "0" or absent: only the operator wakes it. The grant lasts while the
# engine stays asleep and is consumed by the next wake, whoever starts it; a later sleep
# re-grants. The operator grants it only outside a GPUPool and only when the model's policy
# lets a request wake it: in a pool a wake may need an eviction only the pool's plan may order.
PARAM_WAKE_ON_REQUEST: Final = "wake_on_request"
# POST /sleep: "1" changes only the grant of the sleep in place (as `wake_on_request` says): 409
# unless the engine is asleep, never a sleep. The operator takes a grant back with it: its
# report said asleep, but the agent may have woken the engine for a request since.
PARAM_GRANT_ONLY: Final = "grant_only"
FLAG_VALUES: Final = {"1": True, "true": True, "0": False, "false": False}


class WakeOrigin(StrEnum):
    """Who started the wake that made the engine awake."""

    OPERATOR = "operator"  # POST /wake
    REQUEST = "request"  # the agent itself, for a request held while asleep, under the grant


class StateReport(BaseModel):
    """The body of `GET /state` (and of a transition's answer). Times are unix seconds.

    Unknown fields are ignored so an older operator can read a newer agent.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    state: AgentState
    level: int | None = None  # sleep level while asleep (or waking from)
    inflight: int = Field(default=0, ge=0)
    held: int = Field(default=0, ge=0)  # requests waiting in the agent for an awake engine
    last_activity: float | None = None  # the last inference request
    since: float | None = None  # when the current state began
    version: int | None = None  # bumped on every change the operator must react to
    engine_alive: bool = False
    engine_version: str | None = None
    last_error: str | None = None
    # The last measured sleep of this engine (docs/agent.md, "Residual memory"): the device
    # memory it freed, and what stayed (its residual: CUDA context, graphs, NCCL buffers).
    # None until measured; residual_bytes also needs the engine's footprint (--engine-memory-bytes).
    freed_bytes: int | None = Field(default=None, ge=0)
    residual_bytes: int | None = Field(default=None, ge=0)
    # The grant of the current sleep (PARAM_WAKE_ON_REQUEST); only ever true while asleep.
    wake_on_request: bool = False
    # While waking or awake after a wake: who started that wake, and when (unix seconds). None
    # otherwise (awake since load, or after a refused sleep). The operator counts a wake it did
    # not order from these (reconcile/agent_wake.py).
    woken_by: WakeOrigin | None = None
    wake_started: float | None = None

    def to_json(self) -> dict[str, object]:
        return self.model_dump(mode="json")


UNREACHABLE_REPORT: Final = StateReport(state=AgentState.UNREACHABLE)
