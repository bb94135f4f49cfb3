"""Sleep and wake, executed for the operator: drain, call vLLM, confirm, re-admit.

One transition at a time (others get 409). Each runs in its own task so that an operator
hanging up mid-way (timeout, restart) cannot leave the engine half-transitioned with the gate
in the wrong position: the task finishes and the state tells the operator what happened.

The gate is opened only after `/is_sleeping` confirmed the engine awake *and* every step of
the wake succeeded, and closed before the engine is asked to sleep; if the truth is unknowable
the state becomes `failed`, which refuses requests, rather than guessing: on ≤0.16 one request
reaching a sleeping engine kills it.

What the field learned (docs/vllm.md, "Field facts"): on 0.17-0.27 the engine itself is drained
with a bounded `/sleep?level=0&mode=wait` first (requests sent from inside the pod never pass the
agent's drain, and a sleep there can race their kernels); a sleep that tripped "Memory usage
increased after sleeping" is asked again, a few times; a wake whose later step failed (weight
reload, prefix-cache reset) is a failed wake, and the engine is put back to sleep rather than
served with stale weights or cache.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from ..api.agent_protocol import AgentState
from ..vllm import VLLMClient, VLLMError, VLLMHTTPError, WakeTag
from .clock import Clock
from .gate import Gate
from .metrics import AgentMetrics
from .residual import ResidualMeter
from .state import StateBoard

log = logging.getLogger(__name__)

SLEEP_ATTEMPTS = 3  # a sleep that tripped the neighbour assertion is asked again (AIBrix: 3)
ENGINE_DRAIN_BOUND = 10.0  # seconds the engine-side drain may take at most (0.17-0.27)
ENGINE_DRAIN_FLOOR = 1.0  # ...and at least, so that a drain with nothing to wait for can answer


@dataclass(frozen=True)
class Outcome:
    status: int  # the control API's HTTP status
    message: str = ""
    vllm_status: int | None = None
    vllm_body: str | None = None

    @classmethod
    def from_error(cls, status: int, what: str, e: VLLMError) -> Outcome:
        if isinstance(e, VLLMHTTPError):
            return cls(status, f"{what}: {e}", e.status, e.body[:2000])
        return cls(status, f"{what}: {e}")


OK = Outcome(200)


class Transitions:
    def __init__(
        self,
        board: StateBoard,
        gate: Gate,
        vllm: VLLMClient,
        metrics: AgentMetrics,
        *,
        settle_time: float,
        clock: Clock,
        residual: ResidualMeter | None = None,
    ) -> None:
        self._board, self._gate, self._vllm, self._metrics = board, gate, vllm, metrics
        self._settle_time = settle_time
        self._residual = residual or ResidualMeter(None, None)
        self._clock = clock  # the gate's and board's clock: their times are compared here
        self._task: asyncio.Task[Outcome] | None = None

    async def sleep(self, level: int, drain_timeout: float, *, idle: bool = False) -> Outcome:
        """`idle`: the operator's idle timer ordered it, so requests in flight refuse it (409)
        instead of being drained; a forced sleep drains them."""
        if self._busy():  # first: a sleep still reading /version has not changed the state yet
            return self._conflict("sleep")
        if self._board.state is AgentState.ASLEEP:
            return self._count("sleep", "noop", OK)  # idempotent; the level stays what it is
        if self._board.state is not AgentState.AWAKE:
            return self._conflict("sleep")
        if idle and self._gate.inflight:
            return self._not_idle()
        return await self._run(self._sleep(level, drain_timeout, idle=idle))

    async def wake(self) -> Outcome:
        if self._busy():  # never "already awake" while a sleep is starting
            return self._conflict("wake")
        if self._board.state is AgentState.AWAKE:
            return self._count("wake", "noop", OK)
        if self._board.state is not AgentState.ASLEEP:
            return self._conflict("wake")
        return await self._run(self._wake())

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # -- sequences ----------------------------------------------------------------------------

    async def _sleep(self, level: int, drain_timeout: float, *, idle: bool) -> Outcome:
        started = self._clock.monotonic()
        try:
            features = await self._vllm.features()
        except VLLMError as e:
            return self._count("sleep", "error", Outcome.from_error(502, "reading /version", e))
        if level == 2 and not features.http_reload_weights:
            msg = f"level 2 needs vLLM ≥0.10.2 (reload over HTTP); engine is {features.version}"
            return self._count("sleep", "error", Outcome(400, msg))
        if level == 0 and not features.release_kv_cache_memory:
            msg = (
                "level 0 (KV-only: pause, then /release_kv_cache_memory) needs vLLM ≥0.31; "
                f"engine is {features.version or 'of unknown version'}"
            )
            return self._count("sleep", "error", Outcome(400, msg))
        if idle and self._gate.inflight:  # work started while /version was read
            return self._not_idle()
        self._board.set(AgentState.DRAINING)
        self._gate.hold()
        if not await self._gate.wait_idle(drain_timeout):
            # Counted before the gate opens: opening admits the held requests, which are not
            # what kept the drain from ending.
            msg = f"{self._gate.inflight} request(s) still in flight after {drain_timeout:g}s"
            self._board.set(AgentState.AWAKE)
            self._gate.open()
            return self._count("sleep", "drain_timeout", Outcome(504, msg))
        await self._settle()
        self._board.set(AgentState.SLEEPING)
        if level == 0 or features.sleep_races_running_kernels:
            # The engine's own drain: requests sent from inside the pod never passed the gate.
            # Level 0 starts with this pause anyway; 0.17-0.27 must not sleep with work running.
            remaining = drain_timeout - (self._clock.monotonic() - started)
            bound = max(ENGINE_DRAIN_FLOOR, min(remaining, ENGINE_DRAIN_BOUND))
            refused = await self._drain_engine(bound)
            if refused is not None:
                return refused
        self._metrics.drain_seconds.observe(self._clock.monotonic() - started)
        self._residual.mark()
        error = await self._release(level)
        if level == 0 and error is not None:
            # Paused with the KV cache maybe released: a plain wake maps whatever was released
            # and resumes scheduling; the weights never left.
            return await self._resume(Outcome.from_error(502, error.path, error), "error", None)
        sleeping = await self._confirm()
        if sleeping is None:
            return self._count("sleep", "error", self._unknown("sleep", error))
        if sleeping:
            self._board.set(AgentState.ASLEEP, level=level)
            if error is not None:
                # e.g. our timeout fired while vLLM kept going; asleep is what matters for safety.
                return self._count("sleep", "error", Outcome.from_error(502, error.path, error))
            self._measure(level)
            self._metrics.transition_seconds.labels("sleep").observe(
                self._clock.monotonic() - started
            )
            return self._count("sleep", "ok", OK)
        self._board.set(AgentState.AWAKE)
        self._gate.open()
        if error is not None:
            return self._count("sleep", "error", Outcome.from_error(502, error.path, error))
        msg = "vLLM /sleep returned but /is_sleeping is false"
        return self._count("sleep", "error", Outcome(502, msg))

    async def _drain_engine(self, bound: float) -> Outcome | None:
        """`/sleep?level=0&mode=wait` within `bound`; None once vLLM runs nothing. Otherwise the
        engine is resumed (`/wake_up?tags=scheduling`) and the sleep refused like a drain
        timeout: sleeping with requests running is what 0.17-0.27 cannot do safely."""
        try:
            if await self._vllm.drain(bound):
                return None
            outcome = Outcome(
                504, f"requests still running in vLLM after {bound:g}s (sent past the agent)"
            )
            result = "drain_timeout"
        except VLLMError as e:
            log.warning("vLLM drain (level-0 pause) failed: %s", e)
            outcome, result = Outcome.from_error(502, "/sleep?level=0&mode=wait", e), "error"
        return await self._resume(outcome, result, ["scheduling"])

    async def _resume(self, outcome: Outcome, result: str, tags: list[WakeTag] | None) -> Outcome:
        """Undo a pause (or a KV release) that must not become a sleep, then re-admit."""
        error: VLLMError | None = None
        try:
            await self._vllm.wake_up(tags)
        except VLLMError as e:
            error = e
            log.warning("vLLM resume after a refused sleep failed: %s", e)
        sleeping = await self._confirm()
        if sleeping is None:
            return self._count("sleep", "error", self._unknown("sleep", error))
        if sleeping:  # still paused: nothing may be forwarded, and the level is what it is
            self._board.set(AgentState.ASLEEP, level=0)
            if error is not None:
                return self._count("sleep", "error", Outcome.from_error(502, "/wake_up", error))
            return self._count(
                "sleep", "error", Outcome(502, f"{outcome.message}; vLLM stayed paused")
            )
        self._board.set(AgentState.AWAKE)
        self._gate.open()
        return self._count("sleep", result, outcome)

    async def _release(self, level: int) -> VLLMError | None:
        """Ask vLLM to free the memory of `level`; the error that ended it, if any."""
        if level == 0:
            # The level-0 pause is in place (the engine drain); keep the weights, unmap the KV.
            try:
                await self._vllm.release_kv_cache_memory()
            except VLLMError as e:
                log.warning("vLLM /release_kv_cache_memory failed: %s", e)
                return e
            return None
        for attempt in range(1, SLEEP_ATTEMPTS + 1):
            try:
                # After the drain nothing is in flight, so the mode has nothing to act on; "wait"
                # is the choice that cannot lose a request the agent did not see (≥0.17 only).
                await self._vllm.sleep(level, mode="wait")
                return None
            except VLLMHTTPError as e:
                # A neighbour allocating during the sleep trips vLLM's assertion after the
                # memory was released, and the executor does not count itself asleep; asking
                # again completes it. ≤0.17 hides the cause behind an empty 500: ask again too.
                if attempt == SLEEP_ATTEMPTS or not (e.memory_increased or e.opaque):
                    log.warning("vLLM sleep(level=%d) failed: %s", level, e)
                    return e
                log.warning(
                    "vLLM sleep(level=%d) attempt %d failed, asking again: %s", level, attempt, e
                )
                self._metrics.transitions.labels("sleep", "retry").inc()
                self._residual.unreliable()  # a repeated sleep reports what it freed itself: ~0
            except VLLMError as e:
                log.warning("vLLM sleep(level=%d) failed: %s", level, e)
                return e
        return None  # not reached: the last attempt returns

    def _measure(self, level: int) -> None:
        """The residual of this sleep, from vLLM's own report (agent/residual.py)."""
        if level == 0:
            return  # the KV release logs no report; the weights stay, nothing to learn here
        measured = self._residual.measure()
        if measured is not None:
            self._board.freed_bytes, self._board.residual_bytes = measured

    async def _wake(self) -> Outcome:
        started = self._clock.monotonic()
        level = self._board.level
        self._board.set(AgentState.WAKING, level=level)
        error: VLLMError | None = None
        try:
            await self._wake_sequence(level)
        except VLLMError as e:
            error = e
            log.warning("vLLM wake (level %s) failed: %s", level, e)
        sleeping = await self._confirm()
        if sleeping is None:
            return self._count("wake", "error", self._unknown("wake", error))
        if sleeping:
            self._board.set(AgentState.ASLEEP, level=level)
            outcome = (
                Outcome.from_error(502, f"wake: {error.path}", error)
                if error is not None
                else Outcome(502, "vLLM woke but /is_sleeping is still true")
            )
            return self._count("wake", "error", outcome)
        if error is not None:
            # Awake by /is_sleeping, but a step after the memory came back failed (the weight
            # reload, the prefix-cache reset): serving now would answer from stale weights or a
            # stale cache. Put the engine back to sleep, so the operator's retry starts over.
            return await self._unwake(level, error)
        self._board.set(AgentState.AWAKE)
        self._gate.open()
        self._metrics.transition_seconds.labels("wake").observe(self._clock.monotonic() - started)
        return self._count("wake", "ok", OK)

    async def _unwake(self, level: int | None, error: VLLMError) -> Outcome:
        outcome = Outcome.from_error(502, f"wake: {error.path}", error)
        back = 2 if level is None else level  # unknown: level 2 is right whatever it was
        log.warning(
            "wake failed after the memory came back (%s): sleeping again (level %d)", error, back
        )
        redo: VLLMError | None = None
        if back == 0:
            # Pause (nothing to drain: the gate holds everything), then release the KV again.
            try:
                if await self._vllm.drain(ENGINE_DRAIN_BOUND):
                    redo = await self._release(0)
            except VLLMError as e:
                redo = e
        else:
            redo = await self._release(back)
        if await self._confirm():
            self._board.set(AgentState.ASLEEP, level=back)
            return self._count("wake", "error", outcome)
        # Awake with stale weights or cache, or unknowable: refuse requests until re-detected.
        self._unknown("wake", redo or error)
        why = f"; sleeping again failed: {redo}" if redo is not None else ""
        return self._count(
            "wake",
            "error",
            Outcome(502, f"{outcome.message}{why}", outcome.vllm_status, outcome.vllm_body),
        )

    async def _wake_sequence(self, level: int | None) -> None:
        features = await self._vllm.features()
        if level in (0, 1) or (level is None and not features.http_reload_weights):
            # Unknown level on <0.10.2: level 2 cannot be woken over HTTP there, so it was 1.
            await self._vllm.wake_up()
        else:
            # Level 2, or unknown (restarted agent, no gauge before 0.12): the level-2 sequence
            # is correct for both levels, a plain wake after level 2 serves garbage weights.
            await self._vllm.wake_up(["weights"])
            await self._vllm.reload_weights()
            await self._vllm.wake_up(["kv_cache"])
        if not features.sleep_resets_prefix_cache:
            # ≤0.10.0 kept the prefix cache across sleep: its hits now point at discarded KV.
            await self._vllm.reset_prefix_cache()

    # -- helpers ------------------------------------------------------------------------------

    async def _confirm(self) -> bool | None:
        """`/is_sleeping`; None when the engine cannot say (unreachable, 5xx, nonsense)."""
        try:
            return await self._vllm.is_sleeping()
        except VLLMHTTPError as e:
            if e.not_found:
                return False  # dev mode off: this engine cannot sleep at all
            log.error("/is_sleeping failed: %s", e)
        except VLLMError as e:
            log.error("/is_sleeping failed: %s", e)
        return None

    def _unknown(self, what: str, error: VLLMError | None) -> Outcome:
        self._gate.refuse()
        self._board.engine_alive = False
        self._board.set(AgentState.FAILED)
        self._board.last_error = f"{what}: engine state unknown ({error or '/is_sleeping failed'})"
        return Outcome(502, self._board.last_error)

    async def _settle(self) -> None:
        if self._gate.last_abandoned is None:
            return
        wait = self._settle_time - (self._clock.monotonic() - self._gate.last_abandoned)
        if wait > 0:
            await self._clock.sleep(wait)

    async def _run(self, sequence: Coroutine[Any, Any, Outcome]) -> Outcome:
        self._task = asyncio.create_task(sequence)
        return await asyncio.shield(self._task)

    def _busy(self) -> bool:
        return self._task is not None and not self._task.done()

    def _not_idle(self) -> Outcome:
        # Not an error of the engine (last_error stays): the operator retries once idle.
        self._metrics.transitions.labels("sleep", "not_idle").inc()
        return Outcome(409, f"not idle: {self._gate.inflight} request(s) in flight")

    def _conflict(self, kind: str) -> Outcome:
        self._metrics.transitions.labels(kind, "conflict").inc()
        return Outcome(409, f"cannot {kind} while {self._board.state.value}")

    def _count(self, kind: str, result: str, outcome: Outcome) -> Outcome:
        self._metrics.transitions.labels(kind, result).inc()
        if outcome.status >= 400:
            self._board.last_error = outcome.message
        elif result == "ok":
            self._board.last_error = None  # last_error is the latest transition's, if it failed
        return outcome
