"""vLLM 0.34's checkpoint preparation as engine-core calls (docs/vllm.md "vLLM 0.34").

`prepare` pauses generation (new requests get 503 engine_paused), releases the KV cache and
tears down communicators (not simulated); `restore` maps the KV cache again and resumes. While
prepared, /sleep and /wake_up fail (ops.py checks `engine.checkpoint`).
"""

from __future__ import annotations

from .engine import SimEngine
from .memory import OutOfMemory
from .ops import CUDA_OOM, UtilityError, pause, release_kv, resume, transition


async def checkpoint_prepare(engine: SimEngine) -> None:
    """0.34 /checkpoint/prepare: pause generation (new requests get 503 engine_paused), release
    the KV cache, tear down communicators. Idempotent."""
    async with engine.utility_lock, transition(engine, "checkpoint_prepare"):
        if engine.checkpoint == "PREPARED":
            return
        if engine.asleep_tags:
            raise UtilityError(
                "checkpoint_prepare",
                "RuntimeError: checkpoint prepare requires all executor memory to be resident",
            )
        await pause(engine, "abort")
        await release_kv(engine, "checkpoint_prepare")
        engine.checkpoint = "PREPARED"


async def checkpoint_restore(engine: SimEngine) -> None:
    """0.34 /checkpoint/restore: re-map the KV cache and resume generation. Idempotent."""
    async with engine.utility_lock, transition(engine, "checkpoint_restore"):
        if engine.checkpoint == "RUNNING":
            return
        engine.begin_transition("checkpoint_restore")
        try:
            try:
                engine.hold(engine.resident_bytes(set()))
            except OutOfMemory as e:
                engine.record("wake_oom", f"{CUDA_OOM}: {e}")
                raise UtilityError("checkpoint_restore", CUDA_OOM) from e
            await engine.clock.sleep(engine.timings.remap)
            engine.asleep_tags, engine.kv_only = set(), False
            engine.transfers.kv_remaps += 1
        finally:
            engine.end_transition()
        engine.checkpoint = "RUNNING"
        resume(engine)
