"""Finds out what the engine is doing when nobody told the agent: at start, and after failures.

An agent (re)started beside a running engine must not assume "awake": on ≤0.16 forwarding one
request to a sleeping engine kills it. So the agent starts in `loading` (holding requests),
waits for `/health`, asks `/is_sleeping`, and recovers the level from the sleep gauge. While up,
it polls `/health` and declares `failed` after a few misses (requests are then refused, not
held: a dead engine will not wake); when the engine answers again, it is detected afresh.

While awake it also asks `/is_sleeping`: another process of the pod can call vLLM's `/sleep`
(its dev routes are open on the pod's loopback), and from that moment no request may reach the
engine. Such a sleep is reported as `asleep` with an unknown level (the level-2 wake is right
for every level) and requests are held, so the operator sees it and can wake the engine.
"""

from __future__ import annotations

import asyncio
import logging

from ..api.agent_protocol import TRANSITIONING, AgentState
from ..vllm import VLLMClient, VLLMError, VLLMHTTPError
from .gate import Gate
from .state import StateBoard

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(
        self,
        board: StateBoard,
        gate: Gate,
        vllm: VLLMClient,
        *,
        poll_interval: float,
        health_interval: float,
        health_failures: int,
    ) -> None:
        self._board, self._gate, self._vllm = board, gate, vllm
        self._poll_interval = poll_interval
        self._health_interval = health_interval
        self._health_failures = health_failures
        self._misses = 0
        self._poke = asyncio.Event()

    def poke(self) -> None:
        """Check health now (the proxy saw vLLM refuse a connection)."""
        self._poke.set()

    async def run(self) -> None:
        while True:
            state = self._board.state
            try:
                if state in (AgentState.LOADING, AgentState.FAILED):
                    await self.detect()
                elif state not in TRANSITIONING:
                    await self._check_health()
            except VLLMError as e:  # a blip during detection: try again next round
                log.info("engine detection: %s", e)
            except Exception:  # never let the supervisor die: the agent would go blind
                log.exception("supervisor round failed")
            up = self._board.state in (AgentState.AWAKE, AgentState.ASLEEP)
            await self._pause(self._health_interval if up else self._poll_interval)

    async def detect(self) -> None:
        """LOADING/FAILED -> AWAKE or ASLEEP once vLLM is healthy and says which."""
        epoch = self._board.epoch
        if not await self._vllm.health():
            return
        self._vllm.forget_version()  # a restarted engine may run a different image
        engine_version = await self._vllm.version()
        try:
            sleeping = await self._vllm.is_sleeping()
        except VLLMHTTPError as e:
            if not e.not_found:
                raise
            # VLLM_SERVER_DEV_MODE is off: the engine serves but can never sleep.
            log.error("vLLM has no /is_sleeping (VLLM_SERVER_DEV_MODE=1 missing?): sleep disabled")
            sleeping = False
        level = None
        if sleeping:
            gauge = await self._vllm.sleep_state_from_metrics()
            level = gauge.level if gauge is not None else None
        if self._board.epoch != epoch:
            return  # something else changed the state meanwhile; its word wins
        self._misses = 0
        self._board.engine_alive = True
        self._board.engine_version = str(engine_version) if engine_version else None
        if sleeping:
            self._gate.hold()
            self._board.set(AgentState.ASLEEP, level=level)
            log.info("engine is asleep (level %s)", level)
        else:
            self._board.set(AgentState.AWAKE)
            self._gate.open()
            log.info("engine is awake (vLLM %s)", engine_version or "unknown version")

    async def _check_health(self) -> None:
        epoch = self._board.epoch
        healthy = await self._vllm.health()
        if self._board.epoch != epoch:
            return  # a transition started meanwhile; it owns the state now
        if healthy:
            self._misses = 0
            self._board.engine_alive = True
            if self._board.state is AgentState.AWAKE:
                await self._notice_sleep(epoch)
            return
        self._misses += 1
        if self._misses < self._health_failures:
            return
        log.error("vLLM /health failed %d times: engine failed", self._misses)
        self._board.engine_alive = False
        self._board.last_error = "vLLM /health failing"
        self._gate.refuse()
        self._board.set(AgentState.FAILED)

    async def _notice_sleep(self, epoch: int) -> None:
        """AWAKE -> ASLEEP (level unknown) when vLLM sleeps and no transition of ours did it."""
        try:
            sleeping = await self._vllm.is_sleeping()
        except VLLMError as e:  # 404: dev mode off, it cannot sleep; else /health decides
            log.debug("/is_sleeping while awake: %s", e)
            return
        if not sleeping or self._board.epoch != epoch:
            return  # awake, or a transition of ours started meanwhile: its word wins
        self._gate.hold()
        self._board.last_error = "vLLM was put to sleep by a call the agent did not make"
        self._board.set(AgentState.ASLEEP, level=None)
        log.warning("%s: holding requests (level unknown)", self._board.last_error)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._poke.wait(), seconds)
        except TimeoutError:
            pass
        self._poke.clear()
