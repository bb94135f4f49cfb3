"""Replay a list of arrivals against an OpenAI-compatible endpoint (the gateway), open loop.

Each request is sent at its arrival time whether or not earlier ones have answered, as a real
client population would. The time to first token is the first SSE event carrying generated
text for a streamed request, the whole response for a non-streamed one (its first token is not
observable before the last).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from .arrivals import Arrival


@dataclass(frozen=True)
class Outcome:
    arrival: Arrival
    sent: float  # wall clock (time.time()) when the request was sent
    status: int  # the HTTP status; 0 when no response came
    first: float | None  # seconds from sent to the first token; None on failure
    total: float  # seconds from sent to the end of the response (or the failure)
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


async def replay(
    http: aiohttp.ClientSession,
    base_url: str,
    trace: list[Arrival],
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Send every arrival at its time after now; the outcomes in the trace's order."""
    start = time.monotonic()
    tasks: list[asyncio.Task[Outcome]] = []
    for i, a in enumerate(trace):
        delay = start + a.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_one(http, base_url, a, i)))
        if on_outcome is not None:
            tasks[-1].add_done_callback(lambda t: on_outcome(t.result()))
    return list(await asyncio.gather(*tasks))


async def _one(http: aiohttp.ClientSession, base_url: str, a: Arrival, i: int) -> Outcome:
    body = {
        "model": a.model,
        "messages": [{"role": "user", "content": f"request {i}"}],
        "max_tokens": a.max_tokens,
        "stream": a.stream,
    }
    sent, t0 = time.time(), time.perf_counter()
    first: float | None = None
    try:
        async with http.post(f"{base_url}/v1/chat/completions", json=body) as r:
            if r.status != 200:
                text = (await r.text())[:300]
                return Outcome(a, sent, r.status, None, time.perf_counter() - t0, text)
            if not a.stream:
                answer = await r.json()
                first = time.perf_counter() - t0
                error = "" if answer.get("choices") else f"no choices: {answer}"[:300]
                return Outcome(a, sent, 200, first, first, error)
            done = False
            async for line in r.content:
                if not line.startswith(b"data: "):
                    continue
                data = line[6:].strip()
                if data == b"[DONE]":
                    done = True
                elif first is None and _has_text(data):
                    first = time.perf_counter() - t0
            error = "" if done and first is not None else "stream ended without a token or [DONE]"
            return Outcome(a, sent, 200, first, time.perf_counter() - t0, error)
    except (TimeoutError, aiohttp.ClientError, ValueError) as e:
        return Outcome(a, sent, 0, None, time.perf_counter() - t0, f"{type(e).__name__}: {e}")


def _has_text(data: bytes) -> bool:
    """An SSE chunk of a chat completion that carries generated text (not the role-only first
    delta some servers send, nor a usage-only last one)."""
    chunk = json.loads(data)
    return any((c.get("delta") or {}).get("content") for c in chunk.get("choices") or [])
