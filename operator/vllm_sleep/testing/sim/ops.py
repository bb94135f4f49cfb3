"""The engine-core utility calls behind the dev endpoints: sleep, wake_up, pause, reload, ...

Each follows docs/vllm.md for the engine's profile. Failures raise UtilityError, which the
HTTP layer turns into vLLM's 500 ("Call to `<method>` method failed: ...").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Literal

from .engine import MEM_TAGS, MemTag, SimEngine
from .memory import OutOfMemory
from .scheduler import EngineDead, Pause
from .units import gib

log = logging.getLogger(__name__)

Mode = Literal["abort", "wait", "keep"]
SLEEP_GAUGE = {1: "weights_offloaded", 2: "discard_all"}  # any other level: all three 0
CUDA_OOM = "CUDA Error: out of memory at /workspace/csrc/cumem_allocator.cpp:62"
MEMORY_INCREASED = "AssertionError: Memory usage increased after sleeping."
RACE_CRASH = (
    "CUDA error: an illegal memory access was encountered (the sleep unmapped memory that the "
    "aborted requests' kernels were still using: vLLM 0.17-0.27 does not synchronise the device "
    "first, vllm#45520)"
)


class UtilityError(Exception):
    def __init__(self, method: str, message: str) -> None:
        super().__init__(f"Call to `{method}` method failed: {message}")
        self.method = method


@contextlib.asynccontextmanager
async def transition(engine: SimEngine, what: str) -> AsyncIterator[None]:
    """Marks the engine as changing state, so requests arriving now count as violations."""
    if engine.phase != "running":
        raise EngineDead()
    engine.transition = what
    try:
        yield
    finally:
        engine.transition = None


def _require_running_checkpoint(engine: SimEngine, method: str) -> None:
    """0.34: while a checkpoint is not RUNNING, /sleep and /wake_up fail (docs/vllm.md "vLLM 0.34")."""
    if engine.checkpoint != "RUNNING":
        raise UtilityError(
            method,
            f"RuntimeError: {method} is not allowed while the engine is checkpointed "
            f"(checkpoint state {engine.checkpoint}); POST /checkpoint/restore first",
        )


async def sleep(
    engine: SimEngine, level: int, mode: Mode = "abort", reset_connector: bool | None = None
) -> None:
    async with engine.utility_lock, transition(engine, "sleep"):
        _require_running_checkpoint(engine, "sleep")
        legacy, sched = engine.cfg.legacy, engine.sched
        if reset_connector is not None:
            engine.reset_connector = reset_connector
        if sched.running and (legacy or mode == "abort"):
            engine.record(
                "inflight_at_sleep",
                f"/sleep?level={level} (mode={mode}) arrived with {sched.running} request(s) running",
            )
        racing = engine.cfg.unsynced_sleep and not legacy and mode == "abort" and sched.running > 0
        with engine.metrics.operation("sleep", enabled=not legacy):
            if not legacy:
                # ≥0.17: pause the scheduler first; is_sleeping is true from here on.
                sched.set_pause("sleep", Pause.ALL if mode == "keep" else Pause.NEW)
                if mode == "abort":
                    sched.abort()  # in-flight and anything queued while asleep
                elif mode == "wait":
                    await sched.wait_no_running()
            if level == 0 and not legacy:
                await engine.clock.sleep(engine.timings.call_overhead)
            elif engine.sleep_unconfirmed:
                # Asking again after the neighbour assertion: the memory is already released,
                # so the worker frees nothing more and the executor now marks itself asleep.
                free_before = engine.device.free_bytes
                await engine.clock.sleep(engine.timings.call_overhead)
                engine.sleep_unconfirmed = False
                _report_sleep(engine, free_before)
            elif engine.asleep_tags:
                log.info("%s: Executor is already sleeping.", engine.name)
                await engine.clock.sleep(engine.timings.call_overhead)
            else:
                # ≤0.31 workers offload only for exactly level 1; anything else discards.
                await _release(engine, offload=level == 1)
                if racing:
                    _crash_soon(engine, RACE_CRASH)
            engine.sleep_gauge = SLEEP_GAUGE.get(level)


def _crash_soon(engine: SimEngine, message: str) -> None:
    """The engine core dies right after /sleep answered 200 (the fault surfaces in the next
    kernel, not in the sleep call itself)."""

    async def crash() -> None:
        await asyncio.sleep(0.05)  # real time: let the 200 go out first
        engine.crash(message)

    engine.background.add(task := asyncio.get_running_loop().create_task(crash()))
    task.add_done_callback(engine.background.discard)


async def _release(engine: SimEngine, *, offload: bool) -> None:
    t, cfg, moved = engine.timings, engine.cfg, engine.transfers
    free_before = engine.device.free_bytes  # vLLM's Worker.sleep reads mem_get_info() first
    engine.begin_transition("sleep")
    try:
        if offload:
            await engine.clock.sleep(t.sleep if engine.pinned_ready else t.first_sleep)
            if not engine.host_memory.pinned.get(engine):  # 0.34 reuses the kept backup
                try:
                    engine.host_memory.pin(
                        engine, cfg.weights_bytes, owner_limit=engine.memory_limit_bytes
                    )
                except OutOfMemory as e:
                    engine.record("host_oom", str(e))
                    engine.crash(f"OOM-killed while offloading weights: {e}")
                    raise EngineDead() from e
            engine.pinned_ready = engine.offloaded = True
            moved.weights_to_host += 1
            moved.weight_bytes_copied += cfg.weights_bytes
        else:
            await engine.clock.sleep(t.level2_sleep)
            engine.weights_discarded, engine.offloaded = True, False
            if cfg.profile == "0.34" and cfg.speculative_draft and not cfg.draft_preserved:
                engine.draft_discarded = True
        if "kv_cache" not in engine.asleep_tags:
            moved.kv_releases += 1
        engine.asleep_tags, engine.kv_only = set(MEM_TAGS), False
        engine.hold(engine.resident_bytes(), check=False)
        if engine.device.free_bytes < free_before or engine.injected_failures < cfg.fail_sleeps:
            # Worker.sleep asserts that free device memory did not drop; a neighbour that
            # allocated more than this engine released meanwhile trips it after the memory was
            # released, and the executor does not mark itself asleep (asking again completes).
            if engine.device.free_bytes >= free_before:
                engine.injected_failures += 1
            engine.sleep_unconfirmed = True
            log.error("%s: sleep failed: %s", engine.name, MEMORY_INCREASED)
            raise UtilityError("sleep", MEMORY_INCREASED)
        _report_sleep(engine, free_before)
    finally:
        engine.end_transition()


def _report_sleep(engine: SimEngine, free_before: int) -> None:
    """The line vLLM's worker logs after a sleep: the change of the device's free memory (what
    this engine released, unless a neighbour changed memory meanwhile) and the whole device's
    use, neighbours included; the engine's own residual is not in it."""
    dev = engine.device
    freed, in_use = dev.free_bytes - free_before, dev.used_bytes
    line = (
        f"Sleep mode freed {gib(freed):.2f} GiB memory, "
        f"{gib(in_use):.2f} GiB memory is still in use."
    )
    log.info("%s: %s", engine.name, line)
    engine.last_sleep = {
        "freed_bytes": freed,
        "in_use_bytes": in_use,
        "residual_bytes": dev.held_by(engine),
        "message": line,
    }
    engine.log_lines = [*engine.log_lines[-99:], line]
    engine.log_file.info(line)


async def wake_up(engine: SimEngine, tags: list[str] | None) -> bool:
    """Returns True when fully awake afterwards (the /wake_up "status")."""
    async with engine.utility_lock, transition(engine, "wake"):
        _require_running_checkpoint(engine, "wake_up")
        legacy = engine.cfg.legacy
        with engine.metrics.operation("wake", enabled=not legacy):
            mem_tags = tags if legacy or tags is None else [t for t in tags if t != "scheduling"]
            asleep = engine.asleep_tags
            if not asleep or engine.sleep_unconfirmed:
                # After a failed sleep the executor does not know its memory is released: it
                # maps nothing back and the scheduler resumes on unmapped memory.
                log.warning("%s: Executor is not sleeping.", engine.name)
                await engine.clock.sleep(engine.timings.call_overhead)
            elif mem_tags is None:
                await _remap(engine, set(asleep))
            elif bad := [t for t in mem_tags if t not in asleep]:
                for tag in bad:  # one unknown tag and nothing at all is woken
                    log.warning(
                        "%s: Tag %s is not in sleeping tags %s", engine.name, tag, sorted(asleep)
                    )
                await engine.clock.sleep(engine.timings.call_overhead)
            elif mem_tags:
                await _remap(engine, {t for t in MEM_TAGS if t in mem_tags})
            fully = not engine.asleep_tags or engine.sleep_unconfirmed  # as the executor sees it
            if fully:
                engine.sched.set_pause("sleep", Pause.NONE)  # ≥0.24: only once all tags resident
            if fully or legacy:  # ≥0.31 resets the gauge on a full wake only; ≤0.30 on any
                engine.sleep_gauge = "awake"
            return fully


def _wake_seconds(engine: SimEngine, tags: set[MemTag], copy_back: bool) -> float:
    t = engine.timings
    if copy_back:
        return t.wake
    extra = (t.weights_map - t.call_overhead) if "weights" in tags else 0.0
    extra += (t.remap - t.call_overhead) if "kv_cache" in tags else 0.0
    return t.call_overhead + max(0.0, extra)


async def _remap(engine: SimEngine, tags: set[MemTag]) -> None:
    after = engine.asleep_tags - tags
    copy_back = "weights" in tags and engine.offloaded
    engine.begin_transition("wake")
    try:
        try:
            engine.hold(engine.resident_bytes(after))  # cuMem map first
        except OutOfMemory as e:
            engine.record("wake_oom", f"{CUDA_OOM}: {e}")
            raise UtilityError("wake_up", CUDA_OOM) from e
        await engine.clock.sleep(_wake_seconds(engine, tags, copy_back))
        engine.asleep_tags = after
        engine.kv_only = engine.kv_only and bool(after)
        moved = engine.transfers
        if copy_back:
            moved.weights_to_gpu += 1
            moved.weight_bytes_copied += engine.cfg.weights_bytes
        if "kv_cache" in tags:
            moved.kv_remaps += 1
        moved.last_wake = {
            "tags": sorted(tags),
            "weights_copied": copy_back,
            "kv_remapped": "kv_cache" in tags,
        }
        if "weights" in tags:
            engine.offloaded = False
            if copy_back and not engine.cfg.keeps_backup:
                engine.host_memory.unpin(engine)  # ≤0.33 frees the backup on wake
    finally:
        engine.end_transition()


async def release_kv_cache_memory(engine: SimEngine, reset_connector: bool | None = None) -> None:
    async with engine.utility_lock, transition(engine, "release_kv_cache_memory"):
        name = "release_kv_cache_memory"
        if not engine.sched.pause:
            raise UtilityError(name, "release_kv_cache_memory requires a completed pause first")
        if engine.asleep_tags:
            raise UtilityError(
                name, "release_kv_cache_memory requires all executor memory to be resident"
            )
        if reset_connector is not None:
            engine.reset_connector = reset_connector
        with engine.metrics.operation(name):
            await release_kv(engine, name)
            engine.sleep_gauge = None


async def release_kv(engine: SimEngine, what: str) -> None:
    engine.begin_transition(what)
    try:
        await engine.clock.sleep(engine.timings.release_kv)
        engine.asleep_tags, engine.kv_only = {"kv_cache"}, True
        engine.hold(engine.resident_bytes(), check=False)
        engine.transfers.kv_releases += 1
    finally:
        engine.end_transition()


async def reload_weights(engine: SimEngine) -> None:
    async with engine.utility_lock, transition(engine, "reload"):
        if "weights" in engine.asleep_tags:
            raise UtilityError(
                "collective_rpc",
                "RuntimeError: reload_weights needs resident weights; wake them with /wake_up?tags=weights first",
            )
        await engine.clock.sleep(engine.timings.reload)
        engine.weights_discarded = False  # the draft model stays lost (docs/vllm.md "vLLM 0.34")
        engine.transfers.reloads += 1


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
