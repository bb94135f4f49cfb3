"""The swap phase's traffic: streaming requests through the gateway that hop between models.

`schedule` is pure (seeded): bursts of one to three requests for one model, then another model,
so the GPU that holds one model awake at a time must evict one to wake the next. `Traffic` sends
them from a few threads, each timed by the client, while the demo's main thread keeps drawing.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from .chat import stream_chat
from .timeline import Request


def schedule(
    models: tuple[str, ...], seconds: float, rate: float, seed: int = 11
) -> list[tuple[float, str]]:
    """(send offset, model) pairs over `seconds`, about `rate` requests a second (exponential
    gaps); a burst goes to one model and the next burst to a different one."""
    if len(models) < 2:
        raise ValueError("a swap needs at least two models")
    if seconds <= 0 or rate <= 0:
        raise ValueError("seconds and rate must be positive")
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    at, model = 0.0, rng.choice(models)
    while at < seconds:
        for _ in range(rng.randint(1, 3)):
            out.append((round(at, 3), model))
            at += rng.expovariate(rate)
            if at >= seconds:
                break
        model = rng.choice([m for m in models if m != model])
    return out


class Traffic:
    """Sends `plan` through the gateway; `requests` fill in as answers arrive."""

    def __init__(
        self,
        gateway_url: str,
        plan: list[tuple[float, str]],
        origin: float,
        *,
        max_tokens: int = 4,
        concurrency: int = 4,
        timeout: float = 120.0,
    ) -> None:
        self.gateway_url = gateway_url
        self.plan = plan
        self.origin = origin  # time.monotonic() of the timeline's zero
        self.max_tokens = max_tokens
        self.timeout = timeout
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="demo-traffic")
        self._futures: list[Future[None]] = []
        self._active = 0
        self.started: float | None = None

    def start(self) -> None:
        self.started = time.monotonic()
        self._futures = [self._pool.submit(self._one, at, m) for at, m in self.plan]
        self._pool.shutdown(wait=False)

    @property
    def done(self) -> bool:
        return bool(self._futures) and all(f.done() for f in self._futures)

    @property
    def in_flight(self) -> int:
        return self._active

    def _one(self, at: float, model: str) -> None:
        assert self.started is not None
        delay = self.started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent = time.monotonic() - self.origin
        with self._lock:
            self._active += 1
        result = stream_chat(
            self.gateway_url, model, f"swap {at:.2f}", self.max_tokens, timeout=self.timeout
        )
        first = None if result.ttft is None else sent + result.ttft
        done = None if result.total is None else sent + result.total
        with self._lock:
            self._active -= 1
            self.requests.append(
                Request(model, sent, first, done, result.status, result.error[:200])
            )
