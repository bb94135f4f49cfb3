"""Fake generation: deterministic text at TTFT + inter-token latency, honouring pauses.

Every step checks the engine's memory: a step on unmapped weights or KV cache is the CUDA
illegal-address crash of docs/vllm.md "Requests while asleep" (legacy engines reach it; 0.33 only through a bug).
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .scheduler import SimRequest

if TYPE_CHECKING:
    from .engine import SimEngine

WORDS = (
    "the",
    "model",
    "is",
    "sleeping",
    "quietly",
    "while",
    "weights",
    "rest",
    "in",
    "host",
    "memory",
    "and",
    "wakes",
    "when",
    "a",
    "request",
    "arrives",
    "at",
    "gateway",
    "GPU",
)
GARBAGE = "!"  # zeroed/uninitialised weights decode to token 0 over and over


def prompt_seed(text: str) -> int:
    return zlib.crc32(text.encode())


def token_text(seed: int, i: int, garbage: bool = False) -> str:
    if garbage:
        return GARBAGE
    return " " + WORDS[(seed + i * 7) % len(WORDS)]


def count_tokens(text: str) -> int:
    """A tokenizer stand-in: about one token per word, at least one."""
    return max(1, len(text.split()))


Emit = Callable[[str], Awaitable[None]]


async def run_request(engine: SimEngine, req: SimRequest, seed: int, emit: Emit | None) -> str:
    """Generate req.max_tokens tokens; returns the finish_reason. Raises EngineDead."""
    sched, t = engine.sched, engine.timings
    try:
        await sched.wait_admitted(req)
        for i in range(req.max_tokens):
            if req.aborted:
                return "abort"
            await engine.clock.sleep(t.ttft if i == 0 else t.itl)
            await sched.wait_steppable(req)
            if req.aborted:
                return "abort"
            await engine.step(req)
            req.generated += 1
            if emit is not None:
                await emit(token_text(seed, i, req.garbage))
        return "length"
    finally:
        sched.finish(req)
