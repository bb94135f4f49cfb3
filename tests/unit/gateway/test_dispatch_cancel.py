"""dispatch._cancel: reaping a child task never swallows a cancellation aimed at the caller."""

from __future__ import annotations

import asyncio

import pytest

from vllm_sleep.gateway.dispatch import _cancel


async def _slow_to_die(cleaning: asyncio.Event) -> None:
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        cleaning.set()
        await asyncio.sleep(0.05)  # cleanup that takes a moment (closing a connection)
        raise


async def test_the_childs_cancellation_is_absorbed() -> None:
    cleaning = asyncio.Event()
    child = asyncio.create_task(_slow_to_die(cleaning))
    await asyncio.sleep(0)
    await _cancel(child)  # returns normally
    assert child.cancelled()


async def test_a_cancellation_of_the_caller_while_reaping_propagates() -> None:
    cleaning = asyncio.Event()
    reached_after = False

    async def caller() -> None:
        nonlocal reached_after
        child = asyncio.create_task(_slow_to_die(cleaning))
        await asyncio.sleep(0)
        await _cancel(child)
        reached_after = True  # the handler would answer a client that is gone

    task = asyncio.create_task(caller())
    await asyncio.wait_for(cleaning.wait(), 10)
    task.cancel()  # the client left while the child was being reaped
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not reached_after
