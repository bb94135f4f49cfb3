"""Simulated time: every duration passes through one scale factor, so tests run fast."""

from __future__ import annotations

import asyncio
import time


class Clock:
    """Scaled asyncio sleeps. One per host; an engine may multiply in its own scale."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale < 0:
            raise ValueError("time_scale must be >= 0")
        self.time_scale = time_scale

    def scaled(self, seconds: float) -> float:
        return max(0.0, seconds * self.time_scale)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(self.scaled(seconds))

    def child(self, extra_scale: float) -> Clock:
        return Clock(self.time_scale * extra_scale)

    @staticmethod
    def wall() -> float:
        """Wall-clock timestamp for records (violations); never used for durations."""
        return time.time()

    @staticmethod
    def monotonic() -> float:
        return time.monotonic()
