"""Sleep/wake sequences and their failure branches, against an in-memory vLLM."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.agent.clock import Clock
from vllm_sleep.agent.config import AgentConfig
from vllm_sleep.agent.control import ControlAPI
from vllm_sleep.agent.gate import Gate, Mode
from vllm_sleep.agent.metrics import AgentMetrics
from vllm_sleep.agent.state import StateBoard
from vllm_sleep.agent.transitions import Transitions
from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.vllm import VLLMClient


class FakeClock:
    """Fake time: starts at 1000 (monotonic) and unix 1.7e9; sleeping only advances it."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> Clock:
        return Clock(self.monotonic, self.wall, self.sleep)


class FakeVLLM:
    def __init__(self) -> None:
        self.version = "0.33.0"
        self.sleeping = False
        self.fail: dict[str, int] = {}  # path -> status to answer instead
        self.log: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path != "/version":
            query = request.url.query.decode()
            self.log.append(path + ("?" + query if query else ""))
        if path in self.fail:
            return httpx.Response(self.fail[path], text="")
        if path == "/version":
            return httpx.Response(200, json={"version": self.version})
        if path == "/is_sleeping":
            return httpx.Response(200, json={"is_sleeping": self.sleeping})
        if path == "/sleep":
            self.sleeping = True
        if path == "/wake_up" and request.url.params.get_list("tags") in ([], ["kv_cache"]):
            self.sleeping = False
        return httpx.Response(200)


class Rig:
    def __init__(self, fake: FakeVLLM, http: httpx.AsyncClient, settle_time: float = 0) -> None:
        self.fake = fake
        self.clock = FakeClock()
        self.board = StateBoard(self.clock.monotonic)
        self.gate = Gate(max_held=10, clock=self.clock.monotonic)
        self.metrics = AgentMetrics(self.gate, self.board)
        self.vllm = VLLMClient("http://vllm", http=http)
        self.t = Transitions(
            self.board,
            self.gate,
            self.vllm,
            self.metrics,
            settle_time=settle_time,
            clock=self.clock.clock(),
        )

    def set(self, state: AgentState, level: int | None = None) -> None:
        self.board.set(state, level=level)
        if state is AgentState.AWAKE:
            self.gate.open()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    fake = FakeVLLM()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        yield Rig(fake, http)


async def test_sleep_drains_calls_and_confirms(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=1)
    assert out.status == 200
    assert (rig.board.state, rig.board.level, rig.gate.mode) == (AgentState.ASLEEP, 1, Mode.HOLD)
    assert rig.fake.log == ["/sleep?level=1&mode=wait", "/is_sleeping"]


async def test_legacy_sleep_sends_no_mode(rig: Rig) -> None:
    rig.fake.version = "0.16.0"
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(2, drain_timeout=1)).status == 200
    assert rig.fake.log[0] == "/sleep?level=2"


async def test_level_2_refused_without_http_reload(rig: Rig) -> None:
    rig.fake.version = "0.10.1"
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(2, drain_timeout=1)
    assert out.status == 400 and rig.board.state is AgentState.AWAKE
    assert rig.fake.log == []


async def test_failed_sleep_that_left_the_engine_awake_readmits(rig: Rig) -> None:
    rig.fake.fail["/sleep"] = 500
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=1)
    assert (out.status, out.vllm_status, out.vllm_body) == (502, 500, "")
    assert rig.board.state is AgentState.AWAKE and rig.gate.mode is Mode.OPEN


async def test_unknowable_state_fails_closed(rig: Rig) -> None:
    rig.fake.fail["/sleep"] = 500
    rig.fake.fail["/is_sleeping"] = 500
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=1)
    assert out.status == 502
    assert rig.board.state is AgentState.FAILED and rig.gate.mode is Mode.REFUSE


async def test_drain_timeout_readmits(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    await rig.gate.acquire(0)  # one request in flight that never ends
    out = await rig.t.sleep(1, drain_timeout=0.01)
    assert out.status == 504
    assert rig.board.state is AgentState.AWAKE and rig.gate.mode is Mode.OPEN
    assert rig.fake.log == []  # vLLM was never asked


async def test_level_2_wake_reloads_between_weights_and_kv_cache(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    await rig.t.sleep(2, drain_timeout=1)
    rig.fake.log.clear()
    out = await rig.t.wake()
    assert out.status == 200 and rig.gate.mode is Mode.OPEN
    assert rig.fake.log == [
        "/wake_up?tags=weights",
        "/collective_rpc",
        "/wake_up?tags=kv_cache",
        "/is_sleeping",
    ]


async def test_level_1_wake_is_one_call(rig: Rig) -> None:
    rig.fake.sleeping = True
    rig.set(AgentState.ASLEEP, level=1)
    assert (await rig.t.wake()).status == 200
    assert rig.fake.log == ["/wake_up", "/is_sleeping"]


async def test_unknown_level_wakes_the_level_2_way(rig: Rig) -> None:
    rig.fake.sleeping = True
    rig.set(AgentState.ASLEEP, level=None)
    assert (await rig.t.wake()).status == 200
    assert "/collective_rpc" in rig.fake.log


async def test_old_engine_unknown_level_plain_wake_and_prefix_reset(rig: Rig) -> None:
    rig.fake.version = "0.9.2"
    rig.fake.sleeping = True
    rig.set(AgentState.ASLEEP, level=None)
    assert (await rig.t.wake()).status == 200
    assert rig.fake.log == ["/wake_up", "/reset_prefix_cache", "/is_sleeping"]


async def test_wake_failing_mid_sequence_stays_asleep(rig: Rig) -> None:
    rig.fake.sleeping = True
    rig.fake.fail["/collective_rpc"] = 500
    rig.set(AgentState.ASLEEP, level=2)
    out = await rig.t.wake()
    assert out.status == 502 and out.vllm_status == 500
    assert (rig.board.state, rig.board.level, rig.gate.mode) == (AgentState.ASLEEP, 2, Mode.HOLD)


async def test_conflicts_and_noops(rig: Rig) -> None:
    assert (await rig.t.sleep(1, 1)).status == 409  # loading
    assert (await rig.t.wake()).status == 409
    rig.set(AgentState.AWAKE)
    assert (await rig.t.wake()).status == 200
    rig.set(AgentState.ASLEEP, level=1)
    assert (await rig.t.sleep(2, 1)).status == 200
    assert rig.board.level == 1 and rig.fake.log == []
    text = rig.metrics.render().decode()
    assert 'vllm_sleep_agent_transitions_total{kind="sleep",result="conflict"} 1.0' in text


async def test_a_sleep_right_after_an_abandoned_stream_waits_out_the_settle_time() -> None:
    # The gate stamps the abandon with the agent's clock; the settle pause is measured on the
    # same clock, in fake time here.
    fake = FakeVLLM()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        rig = Rig(fake, http, settle_time=0.5)
        rig.set(AgentState.AWAKE)
        rig.gate.note_abandoned()
        rig.clock.now += 0.2
        assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert rig.clock.slept == [pytest.approx(0.3)]


async def test_no_settle_pause_once_the_settle_time_has_passed() -> None:
    fake = FakeVLLM()
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        rig = Rig(fake, http, settle_time=0.5)
        rig.set(AgentState.AWAKE)
        rig.gate.note_abandoned()
        rig.clock.now += 0.6
        assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert rig.clock.slept == []


async def test_the_state_report_converts_the_agents_clock_to_unix_seconds(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)  # since = 1000 on the fake clock
    rig.gate.touch()
    rig.clock.now += 5.0
    api = ControlAPI(
        AgentConfig(control_token="t"),
        rig.board,
        rig.gate,
        rig.t,
        rig.metrics,
        clock=rig.clock.clock(),
    )
    report = api.report()
    assert report.since == report.last_activity == 1_700_000_000.0 + 1000.0
