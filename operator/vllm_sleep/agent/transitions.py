"""Sleep and wake, executed for the operator: drain, call vLLM, confirm, re-admit.

One transition at a time (others get 409; a wake that finds a wake running joins it). A sleep
may grant the agent its wake (`wake_on_request`): then a request held while asleep starts the
same wake sequence at once, without the operator's round trip, and the report says who woke it. Each runs in its own task so that an operator
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
from dataclasses import dataclass

from ..api.agent_protocol import AgentState, WakeOrigin
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
        self._waking = False  # the running task is a wake (a second wake joins it)

    async def sleep(
        self,
        level: int,
        drain_timeout: float,
        *,
        idle: bool = False,
        grant: bool = False,
        grant_only: bool = False,
    ) -> Outcome:
        """`idle`: the operator's idle timer ordered it, so requests in flight refuse it (409)
        instead of being drained; a forced sleep drains them. `grant`: once asleep, a held
        request may wake the engine (`wake_for_request`). `grant_only`: set the grant of the
        sleep in place and nothing else; refused (409) unless asleep."""
        if self._busy():  # first: a sleep still reading /version has not changed the state yet
            return self._conflict("sleep")
        if grant_only and self._board.state is not AgentState.ASLEEP:
            # Ordered from a report that said asleep: the engine woke since (for a request),
            # and a sleep now would cut its minAwake and idle timer short.
            self._metrics.transitions.labels("sleep", "conflict").inc()
            return Outcome(409, f"not asleep ({self._board.state.value}): grant left unchanged")
        if self._board.state is AgentState.ASLEEP:
            # Idempotent, the level stays what it is; the grant is the latest sleep order's.
            if self._board.wake_grant != grant:
                self._board.wake_grant = grant
                self._board.bump()
            outcome = self._count("sleep", "noop", OK)
            self.wake_for_request()  # requests may already be waiting
            return outcome
        if self._board.state is not AgentState.AWAKE:
            return self._conflict("sleep")
        if idle and self._gate.inflight:
            return self._not_idle()
        task = asyncio.create_task(self._sleep(level, drain_timeout, idle=idle, grant=grant))
        # Requests held while it drained or slept wait for a wake: with the grant, it starts
        # as soon as the sleep is done, whether or not its caller is still there.
        task.add_done_callback(lambda t: None if t.cancelled() else self.wake_for_request())
        self._task, self._waking = task, False
        return await asyncio.shield(task)

    async def wake(self) -> Outcome:
        if self._busy():
            if self._waking:
                # The agent started it for a held request (or another caller did): the same
                # wake, one transition; this caller gets its outcome.
                self._metrics.transitions.labels("wake", "joined").inc()
                self._claim_wake()
                return await asyncio.shield(self._wake_task())
            return self._conflict("wake")  # never "already awake" while a sleep is starting
        if self._board.state is AgentState.AWAKE:
            self._claim_wake()
            return self._count("wake", "noop", OK)
        if self._board.state is not AgentState.ASLEEP:
            return self._conflict("wake")
        return await asyncio.shield(self._start_wake(WakeOrigin.OPERATOR))

    def wake_for_request(self) -> None:
        """A request is held: wake the engine now if the sleep granted it and nothing runs.
        Synchronous, so the state is `waking` before anyone reads the held report."""
        if self._busy() or self._board.state is not AgentState.ASLEEP:
            return
        if not self._board.wake_grant or not self._gate.held:
            return
        log.info("waking the engine for %d held request(s) (granted by the sleep)", self._gate.held)
        self._start_wake(WakeOrigin.REQUEST)

    def _claim_wake(self) -> None:
        """An operator's `/wake` that joined the agent's own wake, or found it done, makes it
        the operator's: the operator counts the wake it ordered (its Event, its metric), so the
        report must no longer offer it as the agent's (`woken_by`), or it is counted twice."""
        if self._board.woken_by is WakeOrigin.REQUEST:
            self._board.woken_by = WakeOrigin.OPERATOR
            self._board.bump()

    def _start_wake(self, origin: WakeOrigin) -> asyncio.Task[Outcome]:
        level = self._board.level
        # The start as unix seconds, read once: the operator keys the wake by it, so every
        # report must give the same value (a conversion per report moves with the wall clock).
        self._board.woken_by, self._board.wake_started = origin, round(self._clock.wall(), 3)
        self._board.set(AgentState.WAKING, level=level)  # consumes the grant
        self._task, self._waking = asyncio.create_task(self._wake(level)), True
        return self._task

    def _wake_task(self) -> asyncio.Task[Outcome]:
        assert self._task is not None
        return self._task

    async def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # -- sequences ----------------------------------------------------------------------------

    async def _sleep(
        self, level: int, drain_timeout: float, *, idle: bool, grant: bool = False
    ) -> Outcome:
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
            self._board.wake_grant = grant  # only a sleep that succeeded grants the next wake
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

    async def _wake(self, level: int | None) -> Outcome:
        """The wake sequence, the operator's and the agent's own alike (`_start_wake` has set
        `waking`): the same steps per level, the same confirmation before the gate opens."""
        started = self._clock.monotonic()
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
