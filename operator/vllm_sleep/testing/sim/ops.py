"""The engine-core utility calls behind the dev endpoints: sleep, wake_up, pause, reload, ...

Each follows VLLM_CONTRACT.md for the engine's profile. Failures raise UtilityError, which the
HTTP layer turns into vLLM's 500 ("Call to `<method>` method failed: ...").
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Literal

from .engine import MEM_TAGS, MemTag, SimEngine
from .memory import OutOfMemory
from .scheduler import EngineDead, Pause

log = logging.getLogger(__name__)

Mode = Literal["abort", "wait", "keep"]
SLEEP_GAUGE = {1: "weights_offloaded", 2: "discard_all"}  # any other level: all three 0
CUDA_OOM = "CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:62"


class UtilityError(Exception):
    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"Call to `{method}` method failed: {message}")
        self.method = method


@contextlib.asynccontextmanager
async def _transition(engine: SimEngine, what: str) -> AsyncIterator[None]:
    """Marks the engine as changing state, so requests arriving now count as violations."""
    if engine.phase != "running":
        raise EngineDead()
    engine.transition = what
    try:
        yield
    finally:
        engine.transition = None


async def sleep(engine: SimEngine, level: int, mode: Mode = "abort") -> None:
    async with engine.utility_lock, _transition(engine, "sleep"):
        legacy, sched = engine.cfg.legacy, engine.sched
        if sched.running and (legacy or mode == "abort"):
            engine.record(
                "inflight_at_sleep",
                f"/sleep?level={level} (mode={mode}) arrived with {sched.running} request(s) running",
            )
        with engine.metrics.operation("sleep", enabled=not legacy):
            if not legacy:
                # ≥0.17: pause the scheduler first; is_sleeping is true from here on.
                sched.set_pause("sleep", Pause.ALL if mode == "keep" else Pause.NEW)
                if mode == "abort":
                    sched.abort()  # in-flight and anything queued while asleep
                elif mode == "wait":
                    await sched.wait_no_running()
            if level == 0 and not legacy:
                await engine.clock.sleep(engine.cfg.timings.call_overhead)
            elif engine.asleep_tags:
                log.info("%s: Executor is already sleeping.", engine.name)
                await engine.clock.sleep(engine.cfg.timings.call_overhead)
            else:
                # ≤0.31 workers offload only for exactly level 1; anything else discards.
                await _release(engine, offload=level == 1)
            engine.sleep_gauge = SLEEP_GAUGE.get(level)


async def _release(engine: SimEngine, *, offload: bool) -> None:
    t = engine.cfg.timings
    engine.begin_transition("sleep")
    try:
        if offload:
            await engine.clock.sleep(t.sleep if engine.pinned_ready else t.first_sleep)
            try:
                engine.host_memory.pin(engine, engine.cfg.weights_bytes)
            except OutOfMemory as e:
                engine.record("host_oom", str(e))
                engine.crash(f"OOM-killed while offloading weights: {e}")
                raise EngineDead() from e
            engine.pinned_ready = engine.offloaded = True
        else:
            await engine.clock.sleep(t.level2_sleep)
            engine.weights_discarded, engine.offloaded = True, False
        engine.asleep_tags = set(MEM_TAGS)
        engine.hold(engine.resident_bytes(), check=False)
    finally:
        engine.end_transition()


async def wake_up(engine: SimEngine, tags: list[str] | None) -> bool:
    """Returns True when fully awake afterwards (the /wake_up "status")."""
    async with engine.utility_lock, _transition(engine, "wake"):
        legacy = engine.cfg.legacy
        with engine.metrics.operation("wake", enabled=not legacy):
            mem_tags = tags if legacy or tags is None else [t for t in tags if t != "scheduling"]
            asleep = engine.asleep_tags
            if not asleep:
                log.warning("%s: Executor is not sleeping.", engine.name)
                await engine.clock.sleep(engine.cfg.timings.call_overhead)
            elif mem_tags is None:
                await _remap(engine, set(asleep))
            elif bad := [t for t in mem_tags if t not in asleep]:
                for tag in bad:  # one unknown tag and nothing at all is woken
                    log.warning(
                        "%s: Tag %s is not in sleeping tags %s", engine.name, tag, sorted(asleep)
                    )
                await engine.clock.sleep(engine.cfg.timings.call_overhead)
            elif mem_tags:
                await _remap(engine, {t for t in MEM_TAGS if t in mem_tags})
            fully = not engine.asleep_tags
            if fully:
                engine.sched.set_pause("sleep", Pause.NONE)  # ≥0.24: only once all tags resident
            if fully or legacy:  # ≥0.31 resets the gauge on a full wake only; ≤0.30 on any
                engine.sleep_gauge = "awake"
            return fully


async def _remap(engine: SimEngine, tags: set[MemTag]) -> None:
    t = engine.cfg.timings
    after = engine.asleep_tags - tags
    engine.begin_transition("wake")
    try:
        try:
            engine.hold(engine.resident_bytes(after))  # cuMem map first
        except OutOfMemory as e:
            engine.record("wake_oom", f"{CUDA_OOM}: {e}")
            raise UtilityError("wake_up", CUDA_OOM) from e
        copy_back = "weights" in tags and engine.offloaded
        await engine.clock.sleep(t.wake if copy_back else t.remap)
        engine.asleep_tags = after
        if "weights" in tags:
            engine.offloaded = False  # the pinned buffers stay cached for the next sleep
    finally:
        engine.end_transition()


async def release_kv_cache_memory(engine: SimEngine) -> None:
    async with engine.utility_lock, _transition(engine, "release_kv_cache_memory"):
        name = "release_kv_cache_memory"
        if not engine.sched.pause:
            raise UtilityError(name, "release_kv_cache_memory requires a completed pause first")
        if engine.asleep_tags:
            raise UtilityError(
                name, "release_kv_cache_memory requires all executor memory to be resident"
            )
        with engine.metrics.operation(name):
            engine.begin_transition(name)
            try:
                await engine.clock.sleep(engine.cfg.timings.remap)
                engine.asleep_tags = {"kv_cache"}
                engine.hold(engine.resident_bytes(), check=False)
            finally:
                engine.end_transition()
            engine.sleep_gauge = None


async def reload_weights(engine: SimEngine) -> None:
    async with engine.utility_lock, _transition(engine, "reload"):
        if "weights" in engine.asleep_tags:
            raise UtilityError(
                "collective_rpc",
                "RuntimeError: reload_weights needs resident weights; wake them with /wake_up?tags=weights first",
            )
        await engine.clock.sleep(engine.cfg.timings.reload)
        engine.weights_discarded = False


async def pause(engine: SimEngine, mode: Mode) -> None:
    """/pause. 0.33: abort|wait reject new requests with 503; legacy holds them instead."""
    sched = engine.sched
    sched.set_pause("api", Pause.ALL if mode == "keep" else Pause.NEW)
    sched.reject_new = not engine.cfg.legacy and mode != "keep"
    if mode == "abort":
        sched.abort()
    elif mode == "wait":
        await sched.wait_no_running()


def resume(engine: SimEngine) -> None:
    engine.sched.reject_new = False
    engine.sched.set_pause("api", Pause.NONE)


def abort_requests(engine: SimEngine, ids: Iterable[str] | None) -> int:
    if not ids:
        return engine.sched.abort()
    n = 0
    for rid in ids:
        if req := engine.sched.requests.get(rid):
            req.aborted = True
            n += 1
    engine.sched.poke()
    return n
