"""The leader election edge (controller/leader.py) against an in-memory Lease store that enforces
resourceVersion preconditions as the apiserver does, in fake time."""

from __future__ import annotations

import asyncio
import copy
import threading
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest

from vllm_sleep.api.leader import Timings
from vllm_sleep.controller.leader import LeaderElector

T = Timings()  # 15 / 10 / 2


class Response:
    """What kubernetes_asyncio hands back with _preload_content=False: any status, no raise."""

    def __init__(self, body: dict[str, Any] | None, status: int = 200) -> None:
        self.body = body or {"kind": "Status", "code": status, "message": f"HTTP {status}"}
        self.status = status
        self.reason = "Error"

    async def json(self, content_type: str | None = "application/json") -> dict[str, Any]:
        return copy.deepcopy(self.body)

    async def text(self) -> str:
        return str(self.body)

    def release(self) -> None:
        pass

    async def __aenter__(self) -> Response:  # aiohttp's ClientResponse is a context manager
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Store:
    """One Lease and the Events posted about it; `reachable` False: every call fails."""

    def __init__(self) -> None:
        self.lease: dict[str, Any] | None = None
        self.rv = 0
        self.reachable = True
        self.events: list[str] = []
        self.before_patch: list[Any] = []  # callables run before a patch lands (a racing writer)

    def _check(self) -> None:
        if not self.reachable:
            raise aiohttp.ClientConnectionError("partitioned")

    def _stamp(self) -> None:
        assert self.lease is not None
        self.rv += 1
        self.lease["metadata"]["resourceVersion"] = str(self.rv)

    async def read_namespaced_lease(self, name: str, ns: str, **_: Any) -> Response:
        self._check()
        if self.lease is None:
            return Response(None, 404)
        return Response(self.lease)

    async def create_namespaced_lease(self, ns: str, body: dict[str, Any], **_: Any) -> Response:
        self._check()
        if self.lease is not None:
            return Response(None, 409)
        self.lease = copy.deepcopy(body)
        self.lease["metadata"]["uid"] = "lease-uid"
        self._stamp()
        return Response(self.lease)

    async def patch_namespaced_lease(
        self, name: str, ns: str, body: dict[str, Any], **_: Any
    ) -> Response:
        self._check()
        while self.before_patch:
            self.before_patch.pop(0)()
        assert self.lease is not None
        if body["metadata"]["resourceVersion"] != self.lease["metadata"]["resourceVersion"]:
            return Response(None, 409)
        for key, value in body["spec"].items():
            if value is None:
                self.lease["spec"].pop(key, None)
            else:
                self.lease["spec"][key] = value
        self._stamp()
        return Response(self.lease)

    async def create_namespaced_event(self, ns: str, body: dict[str, Any]) -> None:
        self._check()
        assert body["involvedObject"]["name"] == "leader" and body["reason"] == "LeaderElection"
        self.events.append(body["message"])

    @property
    def holder(self) -> str | None:
        return None if self.lease is None else self.lease["spec"].get("holderIdentity")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.on_sleep: list[Any] = []  # async callables run at each sleep (other replicas' rounds)

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        for hook in list(self.on_sleep):
            await hook()
        await asyncio.sleep(0)


def elector(store: Store, clock: Clock, identity: str, **kw: Any) -> LeaderElector:
    return LeaderElector(
        store,  # type: ignore[arg-type]
        store,  # type: ignore[arg-type]
        "ns",
        "leader",
        identity,
        T,
        clock=clock,
        wall=lambda: datetime(2026, 5, 1, tzinfo=UTC),
        sleep=clock.sleep,
        **kw,
    )


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_first_candidate_creates_the_lease_and_says_so(store: Store, clock: Clock) -> None:
    seen: list[bool] = []
    a = elector(store, clock, "a", on_leading=seen.append, exit_process=lambda _s: None)
    asyncio.run(a.acquire())
    assert store.holder == "a" and seen == [True]
    assert store.lease is not None and store.lease["spec"]["leaseDurationSeconds"] == 15
    assert store.events == ["a became leader"]


def test_a_standby_waits_while_the_holder_renews_and_takes_over_after_the_lease_duration(
    store: Store, clock: Clock
) -> None:
    a = elector(store, clock, "a", exit_process=lambda _s: None)
    b = elector(store, clock, "b", exit_process=lambda _s: None)
    asyncio.run(a.acquire())
    died_at = 30.0
    renewed: list[float] = []

    async def a_renews() -> None:
        if clock.now < died_at:
            decision, _ = await a._round()
            assert decision is None
            renewed.append(clock.now)

    clock.on_sleep.append(a_renews)
    asyncio.run(b.acquire())
    took_at = clock.now
    assert store.holder == "b"
    assert store.lease is not None and store.lease["spec"]["leaseTransitions"] == 1
    # b counts the duration from its first sight of a's last renewal, never from its own start.
    last = renewed[-1]
    assert last + T.lease_duration <= took_at <= last + T.lease_duration + T.retry_period
    assert store.events[-1] == "b became leader (took over from a)"


def test_a_released_lease_is_taken_at_the_next_read(store: Store, clock: Clock) -> None:
    a = elector(store, clock, "a", exit_process=lambda _s: None)
    b = elector(store, clock, "b", exit_process=lambda _s: None)
    asyncio.run(a.acquire())
    asyncio.run(a.release())
    assert store.holder is None
    start = clock.now
    asyncio.run(b.acquire())
    assert store.holder == "b" and clock.now == start
    assert "a stopped leading and released the Lease" in store.events


class Waited(Exception):
    pass


def test_of_two_writers_on_one_version_only_one_wins(store: Store, clock: Clock) -> None:
    a = elector(store, clock, "a", exit_process=lambda _s: None)
    asyncio.run(a.acquire())
    asyncio.run(a.release())
    b = elector(store, clock, "b", exit_process=lambda _s: None)

    def c_takes_it() -> None:  # between b's read of the released Lease and b's write
        assert store.lease is not None
        store.lease["spec"]["holderIdentity"] = "c"
        store._stamp()

    async def b_waits() -> None:
        raise Waited

    store.before_patch.append(c_takes_it)
    clock.on_sleep.append(b_waits)
    with pytest.raises(Waited):  # 409, read again, c holds it: b stands by
        asyncio.run(b.acquire())
    assert store.holder == "c"


def test_the_holder_notices_another_holder_and_stops(store: Store, clock: Clock) -> None:
    a = elector(store, clock, "a", exit_process=lambda _s: None)
    asyncio.run(a.acquire())
    assert store.lease is not None
    store.lease["spec"]["holderIdentity"] = "intruder"
    store._stamp()
    asyncio.run(a.hold())  # returns: lost


def test_a_holder_that_cannot_renew_exits_at_its_renew_deadline(store: Store, clock: Clock) -> None:
    exited = threading.Event()
    statuses: list[int] = []

    def exit_process(status: int) -> None:
        statuses.append(status)
        exited.set()

    a = elector(store, clock, "a", exit_process=exit_process)
    asyncio.run(a.acquire())  # sent at 0: acting until 10
    store.reachable = False
    clock.now = 9.9
    assert not exited.wait(0.6)  # the watchdog polls every 0.25 s of real time
    clock.now = 10.0
    assert exited.wait(5)
    assert statuses == [1]


def test_renewals_push_the_deadline_and_failures_do_not(store: Store, clock: Clock) -> None:
    exited = threading.Event()
    a = elector(store, clock, "a", exit_process=lambda _s: exited.set())
    asyncio.run(a.acquire())

    async def renew_then_partition() -> None:
        clock.now = 8.0
        decision, _ = await a._round()  # renewed, sent at 8: acting until 18
        assert decision is None
        store.reachable = False
        clock.now = 12.0
        with pytest.raises(aiohttp.ClientError):
            await a._round()

    asyncio.run(renew_then_partition())
    assert not exited.wait(0.6)
    clock.now = 18.0
    assert exited.wait(5)
