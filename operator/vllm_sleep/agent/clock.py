"""The agent's one clock: made in main.py, passed down to every part that reads time.

`monotonic` orders and measures (hold and drain durations, the settle pause, `since`); `wall`
only converts those to the unix seconds the control API reports. Tests pass a fake one, so
timing logic runs in fake time and never mixes clocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Clock:
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    def to_wall(self, monotonic_time: float | None) -> float | None:
        """A monotonic reading of this clock as unix seconds (None stays None)."""
        if monotonic_time is None:
            return None
        return round(self.wall() - (self.monotonic() - monotonic_time), 3)


SYSTEM = Clock()
