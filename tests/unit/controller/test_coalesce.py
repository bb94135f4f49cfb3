"""A model's status writes: the first at once, the ones within a window coalesced to the latest."""

from __future__ import annotations

import asyncio

from kubernetes_asyncio.client.exceptions import ApiException

from vllm_sleep.controller.coalesce import Coalescer


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


async def settle() -> None:
    """Let the coalescer's write tasks run (a write due at once is its task's, not the caller's)."""
    for _ in range(5):
        await asyncio.sleep(0)


def writer(log: list[tuple[str, int]], fail: list[BaseException] | None = None):  # type: ignore[no-untyped-def]
    async def write(key: str, value: int) -> None:
        if fail:
            raise fail.pop(0)
        log.append((key, value))

    return write


async def test_the_first_write_goes_at_once_the_next_ones_coalesce_to_the_latest() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(writer(log), window=0.01, clock=clock)
    await c.submit("m", 1)
    await settle()
    assert log == [("m", 1)]  # at once, by its task
    for v in (2, 3, 4):
        await c.submit("m", v)
    assert log == [("m", 1)] and c.pending("m") == 4
    await c.submit("other", 9)  # another key is not held by this one's window
    await settle()
    assert log == [("m", 1), ("other", 9)]
    clock.t += 1  # the window passed: the flusher writes the latest
    await c.drain()
    assert log == [("m", 1), ("other", 9), ("m", 4)]
    clock.t += 1
    await c.submit("m", 5)  # quiet for a window: at once again
    await settle()
    assert log[-1] == ("m", 5)


async def test_a_failed_coalesced_write_is_retried_and_a_gone_object_dropped() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    fail: list[BaseException] = []
    c: Coalescer[str, int] = Coalescer(writer(log, fail), window=0.01, clock=clock)
    await c.submit("m", 1)
    await settle()
    fail.append(ApiException(status=500))
    await c.submit("m", 2)
    clock.t += 1
    await c.drain()
    assert log == [("m", 1), ("m", 2)]  # the 500 was retried
    fail.append(ApiException(status=404))
    await c.submit("m", 3)
    await c.drain()
    assert log == [("m", 1), ("m", 2)] and c.pending("m") is None


async def test_a_quiet_keys_write_never_holds_its_caller_and_a_failed_one_is_retried() -> None:
    # A model's pass must not wait for its status PATCH: the pass after it (a pre-warm's order)
    # would wait for as long as the operator's API connections are busy with other writes.
    log: list[tuple[str, int]] = []
    release = asyncio.Event()
    fail: list[BaseException] = [ApiException(status=409)]
    inner = writer(log, fail)

    async def slow(key: str, value: int) -> None:
        await release.wait()
        await inner(key, value)

    c: Coalescer[str, int] = Coalescer(slow, window=0.01)
    await asyncio.wait_for(c.submit("m", 1), 1)  # returns while the write waits
    assert log == []
    release.set()
    await c.drain()
    assert log == [("m", 1)]  # the 409 was retried


async def test_no_window_writes_every_value() -> None:
    log: list[tuple[str, int]] = []
    c: Coalescer[str, int] = Coalescer(writer(log), window=0)
    for v in range(3):
        await c.submit("m", v)
    assert log == [("m", 0), ("m", 1), ("m", 2)]


async def test_writes_of_one_key_never_overlap() -> None:
    running: list[int] = []
    seen_overlap: list[bool] = []
    clock = Clock()

    async def slow(key: str, value: int) -> None:
        seen_overlap.append(bool(running))
        running.append(value)
        await asyncio.sleep(0.02)
        running.remove(value)

    c: Coalescer[str, int] = Coalescer(slow, window=0.001, clock=clock)
    await c.submit("m", 1)
    await settle()  # its write is in flight
    clock.t += 1  # the window ends while the first write is still in flight
    await c.submit("m", 2)
    await c.drain()
    assert seen_overlap == [False, False]


def always(_value: int) -> bool:
    return True


def first_kind(value: int) -> bool:
    """Values 1 and 10 are the kind held for what follows ("no pods yet", "Starting")."""
    return value in (1, 10)


async def test_with_defer_first_a_new_keys_first_write_waits_for_the_window() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, clock=clock, defer_first=always, first_hold=0.02
    )
    await c.submit("m", 1)  # "Pending, no pods yet"
    await c.submit("m", 2)  # the next pass's, a moment later
    assert log == []
    clock.t += 1
    await c.drain()
    assert log == [("m", 2)]
    clock.t += 1
    await c.submit("m", 3)  # known now: a change after a quiet window goes at once
    await settle()
    assert log[-1] == ("m", 3)
    c.forget("m")  # deleted; a new model of that name is new again
    clock.t += 1
    await c.submit("m", 4)
    assert log[-1] == ("m", 3)
    clock.t += 1
    await c.drain()
    assert log[-1] == ("m", 4)


async def test_a_new_keys_first_value_is_held_until_a_second_follows() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, clock=clock, defer_first=first_kind, first_hold=60
    )
    await c.submit("m", 1)  # "Pending, no pods yet", from the pass that creates the pod
    clock.t += 1  # a busy operator: the pass that sees the pod comes windows later
    await asyncio.sleep(0.05)
    assert log == [] and c.pending("m") == 1
    await c.submit("m", 2)  # a window passed since the first: written at once, alone
    await settle()
    assert log == [("m", 2)] and c.pending("m") is None
    await c.drain()
    assert log == [("m", 2)]


async def test_a_second_value_within_the_window_is_written_when_it_ends() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, clock=clock, defer_first=first_kind, first_hold=60
    )
    await c.submit("m", 1)
    await c.submit("m", 2)  # at once: within the first's window, the hold ends with it
    assert log == []
    clock.t += 1
    await c.drain()
    assert log == [("m", 2)]


async def test_a_first_value_nothing_follows_is_written_after_the_hold() -> None:
    log: list[tuple[str, int]] = []
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, defer_first=always, first_hold=0.05
    )
    await c.submit("m", 1)
    await asyncio.sleep(0.02)  # past the window, within the hold
    assert log == []
    await c.drain()
    assert log == [("m", 1)]


async def test_values_of_the_held_kind_replace_the_held_one_and_the_hold_goes_on() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, clock=clock, defer_first=first_kind, first_hold=60
    )
    await c.submit("m", 1)  # "Pending, no pods yet"
    clock.t += 1
    await c.submit("m", 10)  # "Starting", no agent heard yet: still nothing worth a write
    assert log == [] and c.pending("m") == 10
    await c.submit("m", 2)  # its agent heard: written at once (a window passed since the first)
    await settle()
    assert log == [("m", 2)]
    await c.drain()
    assert log == [("m", 2)]


async def test_the_hold_ends_first_hold_after_the_first_value_even_if_more_of_its_kind_came() -> (
    None
):
    log: list[tuple[str, int]] = []
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=0.01, defer_first=first_kind, first_hold=0.05
    )
    await c.submit("m", 1)
    await c.submit("m", 10)
    await c.drain()
    assert log == [("m", 10)]


async def test_a_held_value_is_written_only_if_nothing_follows_within_the_window() -> None:
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(writer(log), window=0.01, clock=clock)
    await c.submit("m", 1)  # quiet key: at once
    await settle()
    clock.t += 1
    await c.submit("m", 2, held=True)  # superseded already by the transition its pass started
    assert log == [("m", 1)] and c.pending("m") == 2
    await c.submit("m", 3)  # the next pass's: replaces it
    clock.t += 1
    await c.drain()
    assert log == [("m", 1), ("m", 3)]
    clock.t += 1
    await c.submit("m", 4, held=True)  # nothing follows: written when the window ends
    assert log[-1] == ("m", 3)
    clock.t += 1
    await c.drain()
    assert log[-1] == ("m", 4)


async def test_a_forgotten_keys_queued_value_is_never_written_onto_a_new_object() -> None:
    # A model deleted and made again under its name within the window: the old one's queued
    # status ("Awake 1/1") must not be PATCHed onto the new one by name.
    log: list[tuple[str, int]] = []
    clock = Clock()
    c: Coalescer[str, int] = Coalescer(writer(log), window=1.0, clock=clock)
    await c.submit("m", 1)
    await settle()
    await c.submit("m", 2)  # queued behind the window
    assert c.pending("m") == 2
    c.forget("m")  # DELETED
    assert c.pending("m") is None
    await c.submit("m", 7)  # the new object's first status: a quiet key again, at once
    await settle()
    clock.t += 5
    await c.drain()
    assert log == [("m", 1), ("m", 7)]


async def behind_a_busy_connection(
    log: list[tuple[str, int]], clock: Clock
) -> tuple[Coalescer[str, int], asyncio.Event, asyncio.Task[None]]:
    """A coalescer whose writes take a turn at a one-connection gate another request holds
    until the returned event is set (the task is that request)."""
    from vllm_sleep.controller.lanes import Lane, PriorityGate

    gate = PriorityGate(1)
    c: Coalescer[str, int] = Coalescer(
        writer(log), window=2.0, clock=clock, slot=lambda: gate.slot(Lane.NORMAL)
    )
    busy = asyncio.Event()

    async def other_request() -> None:
        async with gate.slot(Lane.START):
            await busy.wait()

    other = asyncio.create_task(other_request())
    await settle()
    return c, busy, other


async def test_a_write_waiting_for_its_turn_sends_the_latest_value_once() -> None:
    # A status queued behind a fleet's creates (no free connection): by the time it is sent
    # the model went on (Loading -> Asleep); only the latest goes, once.
    log: list[tuple[str, int]] = []
    clock = Clock()
    c, busy, other = await behind_a_busy_connection(log, clock)
    await c.submit("m", 1)  # due at once: its task waits for the connection
    await settle()
    clock.t += 0.5
    await c.submit("m", 2)  # within the window: replaces the value still waiting
    await settle()
    assert log == []
    busy.set()
    await other
    await asyncio.wait_for(c.drain(), timeout=10)
    assert log == [("m", 2)]


async def test_after_a_long_wait_for_its_turn_the_window_counts_from_the_write() -> None:
    # A value submitted while a delayed write runs waits out a window from that write, not
    # from when the write queued: the next write is not due at once, when writes are dearest.
    log: list[tuple[str, int]] = []
    clock = Clock()
    c, busy, other = await behind_a_busy_connection(log, clock)
    await c.submit("m", 1)
    await settle()
    clock.t += 30.0  # the connection stays busy for 30 s
    busy.set()
    await other
    await settle()
    assert log == [("m", 1)]
    await c.submit("m", 2)  # just after that write
    await settle()
    assert log == [("m", 1)]  # held for the window, not written at once
    clock.t += 2.0
    await asyncio.wait_for(c.drain(), timeout=10)
    assert log == [("m", 1), ("m", 2)]
