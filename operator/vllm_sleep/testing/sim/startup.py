"""Engine startup: vLLM's free-memory check, weight load, and memory profiling.

As docs/vllm.md "Shared GPUs" and "vLLM 0.34" describe them.

The CUDA context (residual) is taken at once, the weights after the first part of the load, the
KV cache at the end: the rest of the share, a fixed --kv-cache-memory-bytes, or (0.34's
extensible KV cache, no share given) whatever is free after warm-up less a margin, with no
startup check. During the last `profiling_fraction` of the load vLLM profiles memory and asserts
that free memory did not change under it; any neighbour that changes memory on the device
meanwhile fails this engine's startup.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .memory import GPUDevice, OutOfMemory
from .units import gib

if TYPE_CHECKING:
    from .engine import SimEngine

log = logging.getLogger(__name__)


NO_KV_CACHE_MESSAGE = (
    "ValueError: No available memory for the cache blocks. Try increasing "
    "`gpu_memory_utilization` when initializing the engine."
)


async def load(engine: SimEngine) -> None:
    cfg, t, dev = engine.cfg, engine.cfg.timings, engine.device  # load time: no KV term
    engine.transition = "startup"
    engine.begin_transition("startup")
    disturbed: list[str] = []

    def on_change(_dev: GPUDevice, owner: object, delta: int) -> None:
        if owner is not engine and not disturbed:
            verb = "released" if delta < 0 else "allocated"
            disturbed.append(f"{getattr(owner, 'name', owner)} {verb} {gib(abs(delta)):.2f} GiB")

    try:
        if not cfg.extensible_kv and dev.free_bytes < engine.requested:
            return engine.fail("startup_oom", free_memory_message(engine))
        dev.set_held(engine, engine.residual)  # CUDA context first
        await engine.clock.sleep(t.load * (1 - cfg.profiling_fraction))
        dev.set_held(engine, engine.residual + engine.weights_dev)
        free_before = dev.free_bytes
        dev.subscribe(on_change)
        try:
            await engine.clock.sleep(t.load * cfg.profiling_fraction)
        finally:
            dev.unsubscribe(on_change)
        if disturbed:
            message = profiling_message(free_before, dev.free_bytes, disturbed[0])
            return engine.fail("profiling_race", message)
        if cfg.extensible_kv:
            engine.kv_dev = max(0, dev.free_bytes - cfg.kv_margin_bytes)
            engine.share = engine.residual + engine.weights_dev + engine.kv_dev
        fixed = cfg.kv_cache_memory_bytes is not None or cfg.extensible_kv
        if engine.kv_dev <= 0 or (
            not fixed and cfg.weights_bytes + engine.residual >= engine.requested
        ):
            # KV cache = this engine's share minus its own non-KV usage (weights, context):
            # nothing left means vLLM refuses to start (v1/core/kv_cache_utils.py).
            return engine.fail("startup_oom", NO_KV_CACHE_MESSAGE)
        dev.set_held(engine, engine.share)  # the KV cache, sized at startup
    except OutOfMemory as e:
        return engine.fail("startup_oom", f"CUDA out of memory during startup: {e}")
    finally:
        engine.end_transition()
        engine.transition = None
    engine.phase = "running"
    engine.ready.set()
    log.info("%s: loaded, holds %.2f GiB on %s", engine.name, gib(engine.share), dev.name)


def free_memory_message(engine: SimEngine) -> str:
    d = engine.device
    return (
        f"Free memory on device [cuda:{d.index}] ({gib(d.free_bytes):.2f}/{gib(d.total_bytes):.2f} GiB) "
        f"on startup is less than desired GPU memory utilization "
        f"({engine.cfg.util}, {gib(engine.requested):.2f} GiB). Decrease GPU memory "
        f"utilization or reduce GPU memory used by other processes."
    )


def profiling_message(before: int, now: int, cause: str) -> str:
    return (
        f"Error in memory profiling. Initial free memory {gib(before):.2f} GiB, current free "
        f"memory {gib(now):.2f} GiB. This happens when other processes sharing the same "
        f"container release GPU memory while vLLM is profiling during initialization. To fix "
        f"this, ensure consistent GPU memory allocation or isolate vLLM in its own container. "
        f"({cause})"
    )
