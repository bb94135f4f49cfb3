"""Counters an engine keeps for /metrics. Rendering lives in routes_metrics.py."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

# prometheus_client's default histogram buckets, as vLLM's sleep-mode histogram uses them.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))
    total: float = 0.0
    n: int = 0

    def observe(self, value: float) -> None:
        self.n += 1
        self.total += value
        for i, bound in enumerate(BUCKETS):
            if value <= bound:
                self.counts[i] += 1


@dataclass
class EngineMetrics:
    prompt_tokens: int = 0
    generation_tokens: int = 0
    finished: dict[str, int] = field(default_factory=dict)  # finished_reason -> count
    # Sleep-mode operation metrics (≥0.32) exist only after the first operation: created lazily.
    op_duration: dict[str, Histogram] = field(default_factory=dict)
    op_in_flight: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def operation(self, name: str, *, enabled: bool = True) -> Iterator[None]:
        if not enabled:
            yield
            return
        self.op_in_flight[name] = self.op_in_flight.get(name, 0) + 1
        hist = self.op_duration.setdefault(name, Histogram())
        start = time.monotonic()  # real seconds: what a scrape of the simulator would measure
        try:
            yield
        finally:
            self.op_in_flight[name] -= 1
            hist.observe(time.monotonic() - start)

    def finish(self, reason: str) -> None:
        self.finished[reason] = self.finished.get(reason, 0) + 1
