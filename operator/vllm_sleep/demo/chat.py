"""One streaming OpenAI chat request through the gateway, timed from the client's side.

It runs in a thread and reports through a queue, so the main thread can keep the live model
table on screen while the request is held (the model wakes), then print tokens as they arrive.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class ChatResult:
    status: int = 0
    ttft: float | None = None  # request sent -> first content token
    total: float | None = None
    tokens: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class Event:
    kind: str  # "token" | "done"
    at: float  # seconds since the request was sent
    text: str = ""


def parse_sse_line(line: str) -> str | None:
    """The content delta of one SSE line of a chat completion stream ('' for none, None at the
    end marker)."""
    if not line.startswith("data:"):
        return ""
    data = line[5:].strip()
    if data == "[DONE]":
        return None
    try:
        chunk: dict[str, Any] = json.loads(data)
    except ValueError:
        return ""
    choices = chunk.get("choices") or [{}]
    return str((choices[0].get("delta") or {}).get("content") or "")


def stream_chat(
    gateway_url: str,
    model: str,
    prompt: str,
    max_tokens: int,
    events: queue.Queue[Event] | None = None,
    timeout: float = 180.0,
    result: ChatResult | None = None,
) -> ChatResult:
    # Filled in place, so a reader woken by the "done" event sees the final result.
    result = result if result is not None else ChatResult()
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.monotonic()
    try:
        with httpx.stream(
            "POST", f"{gateway_url}/v1/chat/completions", json=body, timeout=timeout
        ) as r:
            result.status = r.status_code
            if r.status_code != 200:
                result.error = r.read().decode(errors="replace")[:500]
            else:
                for line in r.iter_lines():
                    delta = parse_sse_line(line)
                    if delta is None:
                        break
                    if not delta:
                        continue
                    at = time.monotonic() - t0
                    if result.ttft is None:
                        result.ttft = at
                    result.tokens.append(delta)
                    if events is not None:
                        events.put(Event("token", at, delta))
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
    result.total = time.monotonic() - t0
    if events is not None:
        events.put(Event("done", result.total))
    return result


class ChatThread:
    """`stream_chat` in the background; `events` yields tokens, `result` once done."""

    def __init__(self, gateway_url: str, model: str, prompt: str, max_tokens: int) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.result = ChatResult()
        self._thread = threading.Thread(
            target=self._run, args=(gateway_url, model, prompt, max_tokens), daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self, gateway_url: str, model: str, prompt: str, max_tokens: int) -> None:
        stream_chat(gateway_url, model, prompt, max_tokens, self.events, result=self.result)
