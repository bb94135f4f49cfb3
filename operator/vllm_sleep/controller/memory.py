"""Freed memory handed back to the OS, so the operator's RSS follows what it holds.

A fleet's bring-up allocates in bursts (a thousand models' first passes, their manifests and
the API's answers, at once). Freed, those chunks stay in glibc's heap between live ones and
count in the process's RSS, what a container's memory limit sees, long after. glibc gives pages
back from the top of its heap only; `malloc_trim(0)` gives back every free page in it. Without
glibc (musl, macOS) there is nothing to call and nothing runs.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

TRIM_SECONDS = 30.0


def glibc_trim() -> Callable[[], int] | None:
    """`malloc_trim(0)` of this process's glibc, or None where there is none."""
    try:
        fn = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return lambda: int(fn(0))


async def trim_periodically(
    trim: Callable[[], int],
    seconds: float = TRIM_SECONDS,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Every `seconds`, `trim()` in a thread (it walks the heap; the loop keeps serving)."""
    while True:
        await sleep(seconds)
        try:
            await asyncio.to_thread(trim)
        except Exception:  # never worth stopping the operator for
            log.warning("malloc_trim failed", exc_info=True)
