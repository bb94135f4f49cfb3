"""The operator hands freed heap pages back to the OS now and then (glibc's malloc_trim)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from vllm_sleep.controller.memory import glibc_trim, trim_periodically


async def test_trims_every_period_and_survives_a_failed_trim() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def trim() -> int:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("boom")
        return 1

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) > 3:
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await trim_periodically(trim, 7.0, sleep)
    assert len(calls) == 3 and sleeps == [7.0] * 4


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc")
def test_glibc_trim_runs_here() -> None:
    trim = glibc_trim()
    if trim is None:
        pytest.skip("no glibc (musl)")
    assert trim() in (0, 1)
