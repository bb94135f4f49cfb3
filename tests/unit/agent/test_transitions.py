"""Sleep/wake sequences and their failure branches, against an in-memory vLLM."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from vllm_sleep.agent.clock import Clock
from vllm_sleep.agent.config import AgentConfig
from vllm_sleep.agent.control import ControlAPI
from vllm_sleep.agent.gate import Gate, Mode
from vllm_sleep.agent.metrics import AgentMetrics
from vllm_sleep.agent.residual import ResidualMeter
from vllm_sleep.agent.state import StateBoard
from vllm_sleep.agent.transitions import Transitions
from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.vllm import VLLMClient

GIB = 1 << 30


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
        # path -> answers (or exceptions) given once each, in order, before the usual ones
        self.then: dict[str, list[httpx.Response | Exception]] = {}
        self.log: list[str] = []
        self.on_sleep: list[str] = []  # lines "logged" by each memory-releasing sleep
        self.log_file: Path | None = None

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        query = request.url.query.decode()
        call = path + ("?" + query if query else "")
        if path != "/version":
            self.log.append(call)
        if pending := self.then.get(call) or self.then.get(path):
            answer = pending.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer
        if path in self.fail:
            return httpx.Response(self.fail[path], text="")
        if path == "/sleep" and self.log_file is not None and self.on_sleep:
            with self.log_file.open("a") as f:
                f.write(self.on_sleep.pop(0) + "\n")
        if path == "/version":
            return httpx.Response(200, json={"version": self.version})
        if path == "/is_sleeping":
            return httpx.Response(200, json={"is_sleeping": self.sleeping})
        if path == "/sleep":
            self.sleeping = True
        if path == "/wake_up" and request.url.params.get_list("tags") in (
            [],
            ["kv_cache"],
            ["scheduling"],
        ):
            self.sleeping = False
        return httpx.Response(200)


class Rig:
    def __init__(
        self,
        fake: FakeVLLM,
        http: httpx.AsyncClient,
        settle_time: float = 0,
        residual: ResidualMeter | None = None,
    ) -> None:
        self.fake = fake
        self.clock = FakeClock()
        self.board = StateBoard(self.clock.monotonic)
        # As the Agent wires it: a held request may start the agent's own wake.
        self.gate = Gate(
            max_held=10,
            clock=self.clock.monotonic,
            on_held=lambda: self.t.wake_for_request(),
        )
        self.metrics = AgentMetrics(self.gate, self.board)
        self.vllm = VLLMClient("http://vllm", http=http)
        self.t = Transitions(
            self.board,
            self.gate,
            self.vllm,
            self.metrics,
            settle_time=settle_time,
            clock=self.clock.clock(),
            residual=residual,
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


# -- what the field learned (docs/vllm.md "Field facts") ------------------------------------

ASSERTION = httpx.Response(
    500,
    json={
        "error": {
            "message": "Call to `sleep` method failed: AssertionError: Memory usage increased "
            "after sleeping.",
            "type": "InternalServerError",
        }
    },
)


def retries(rig: Rig) -> float | None:
    return rig.metrics.registry.get_sample_value(
        "vllm_sleep_agent_transitions_total", {"kind": "sleep", "result": "retry"}
    )


async def test_on_0_17_to_0_27_the_engine_is_drained_before_it_sleeps(rig: Rig) -> None:
    rig.fake.version = "0.27.1"
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(1, drain_timeout=30)).status == 200
    assert rig.fake.log == ["/sleep?level=0&mode=wait", "/sleep?level=1&mode=wait", "/is_sleeping"]


@pytest.mark.parametrize("version", ["0.16.0", "0.28.0", "0.34.0"])
async def test_other_versions_sleep_in_one_call(rig: Rig, version: str) -> None:
    rig.fake.version = version
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(1, drain_timeout=30)).status == 200
    assert [c for c in rig.fake.log if c.startswith("/sleep")] == [
        "/sleep?level=1" + ("&mode=wait" if version != "0.16.0" else "")
    ]


async def test_requests_left_in_the_engine_resume_it_and_refuse_the_sleep(rig: Rig) -> None:
    rig.fake.version = "0.20.0"
    rig.fake.then["/sleep?level=0&mode=wait"] = [httpx.ReadTimeout("still decoding")]
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=30)
    assert out.status == 504 and "still running in vLLM" in out.message
    assert rig.fake.log == ["/sleep?level=0&mode=wait", "/wake_up?tags=scheduling", "/is_sleeping"]
    assert (rig.board.state, rig.gate.mode) == (AgentState.AWAKE, Mode.OPEN)


async def test_the_engine_drain_is_bounded_by_what_is_left_of_the_drain_timeout() -> None:
    seen: list[float] = []
    fake = FakeVLLM()
    fake.version = "0.25.0"

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("level") == "0":
            seen.append(request.extensions["timeout"]["read"])
        return fake(request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        rig = Rig(fake, http)
        rig.set(AgentState.AWAKE)
        assert (await rig.t.sleep(1, drain_timeout=3)).status == 200
        rig.fake.sleeping = False
        rig.set(AgentState.AWAKE)
        assert (await rig.t.sleep(1, drain_timeout=600)).status == 200
    assert seen == [3.0, 10.0]  # a short bound: what is left of the drain, at most 10 s


async def test_a_sleep_tripping_the_neighbour_assertion_is_asked_again(rig: Rig) -> None:
    rig.fake.then["/sleep"] = [ASSERTION]
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=1)
    assert out.status == 200 and rig.board.state is AgentState.ASLEEP
    assert rig.fake.log == ["/sleep?level=1&mode=wait"] * 2 + ["/is_sleeping"]
    assert retries(rig) == 1


async def test_the_retries_are_bounded(rig: Rig) -> None:
    rig.fake.then["/sleep"] = [ASSERTION] * 5
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(1, drain_timeout=1)
    assert out.status == 502 and out.vllm_status == 500
    assert "Memory usage increased" in (out.vllm_body or "")
    assert rig.fake.log.count("/sleep?level=1&mode=wait") == 3


async def test_other_sleep_failures_are_not_retried(rig: Rig) -> None:
    rig.fake.then["/sleep"] = [httpx.Response(500, json={"error": {"message": "CUDA error"}})]
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 502
    assert rig.fake.log.count("/sleep?level=1&mode=wait") == 1 and retries(rig) is None


async def test_level_0_pauses_then_releases_the_kv_cache_and_wakes_in_one_call(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(0, drain_timeout=5)).status == 200
    assert (rig.board.state, rig.board.level) == (AgentState.ASLEEP, 0)
    assert rig.fake.log == ["/sleep?level=0&mode=wait", "/release_kv_cache_memory", "/is_sleeping"]
    rig.fake.log.clear()
    assert (await rig.t.wake()).status == 200
    assert rig.fake.log == ["/wake_up", "/is_sleeping"]


@pytest.mark.parametrize("version", ["0.30.0", "0.16.0"])
async def test_level_0_needs_0_31(rig: Rig, version: str) -> None:
    rig.fake.version = version
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(0, drain_timeout=5)
    assert out.status == 400 and "≥0.31" in out.message
    assert rig.fake.log == [] and rig.board.state is AgentState.AWAKE


async def test_a_failed_kv_release_resumes_the_engine(rig: Rig) -> None:
    rig.fake.then["/release_kv_cache_memory"] = [httpx.Response(500, text="no pause")]
    rig.set(AgentState.AWAKE)
    out = await rig.t.sleep(0, drain_timeout=5)
    assert out.status == 502 and out.vllm_body == "no pause"
    assert rig.fake.log[-2:] == ["/wake_up", "/is_sleeping"]
    assert (rig.board.state, rig.gate.mode) == (AgentState.AWAKE, Mode.OPEN)


async def test_a_wake_whose_prefix_reset_failed_fails_and_sleeps_again(rig: Rig) -> None:
    rig.fake.version = "0.9.2"
    rig.fake.sleeping = True
    rig.fake.fail["/reset_prefix_cache"] = 500
    rig.set(AgentState.ASLEEP, level=1)
    out = await rig.t.wake()
    assert (out.status, out.vllm_status) == (502, 500) and "/reset_prefix_cache" in out.message
    assert rig.fake.log == [
        "/wake_up",
        "/reset_prefix_cache",
        "/is_sleeping",
        "/sleep?level=1",
        "/is_sleeping",
    ]
    assert (rig.board.state, rig.board.level, rig.gate.mode) == (AgentState.ASLEEP, 1, Mode.HOLD)
    assert rig.board.last_error == out.message


async def test_a_wake_whose_reload_failed_never_serves_even_if_vllm_says_awake(rig: Rig) -> None:
    # An engine that resumes on the weights tag (0.17-0.23 resume on any wake) reads awake
    # after the reload failed: its weights are uninitialised.
    rig.fake.sleeping = True
    rig.fake.then["/wake_up?tags=weights"] = [httpx.Response(200)]
    rig.fake.then["/collective_rpc"] = [httpx.Response(500, text="reload failed")]
    rig.set(AgentState.ASLEEP, level=2)
    rig.fake.sleeping = False  # what that engine's /is_sleeping says after the partial wake
    out = await rig.t.wake()
    assert out.status == 502 and out.vllm_body == "reload failed"
    assert rig.fake.log[-2:] == ["/sleep?level=2&mode=wait", "/is_sleeping"]
    assert (rig.board.state, rig.board.level, rig.gate.mode) == (AgentState.ASLEEP, 2, Mode.HOLD)


async def test_a_wake_that_cannot_be_undone_refuses_requests(rig: Rig) -> None:
    rig.fake.version = "0.9.2"
    rig.fake.sleeping = True
    rig.fake.fail["/reset_prefix_cache"] = 500
    rig.fake.then["/sleep"] = [httpx.Response(500, text="x")]
    rig.set(AgentState.ASLEEP, level=1)
    out = await rig.t.wake()
    assert out.status == 502 and "sleeping again failed" in out.message
    assert (rig.board.state, rig.gate.mode) == (AgentState.FAILED, Mode.REFUSE)


async def test_a_second_transition_while_one_runs_is_409(rig: Rig) -> None:
    rig.set(AgentState.AWAKE)
    started = rig.gate.acquire(0)
    await started  # a request in flight keeps the drain going
    sleeping = asyncio.create_task(rig.t.sleep(1, drain_timeout=30))
    await asyncio.sleep(0)
    assert (await rig.t.sleep(2, drain_timeout=1)).status == 409
    assert (await rig.t.wake()).status == 409
    rig.gate.release()
    assert (await sleeping).status == 200


# -- the residual, from vLLM's sleep report -----------------------------------------------

REPORT = (
    "INFO [gpu_worker.py:112] Sleep mode freed {:.2f} GiB memory, 41.00 GiB memory is still in use."
)


async def test_a_sleep_measures_freed_and_residual_from_the_vllm_log(tmp_path: Path) -> None:
    log_file = tmp_path / "vllm.log"
    log_file.write_text("INFO startup\n" + REPORT.format(3.0) + "\n")  # an older sleep's line
    fake = FakeVLLM()
    fake.log_file, fake.on_sleep = log_file, [REPORT.format(14.6)]
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        rig = Rig(fake, http, residual=ResidualMeter(log_file, 16 * GIB))
        rig.set(AgentState.AWAKE)
        assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert rig.board.freed_bytes == round(14.6 * GIB)
    assert rig.board.residual_bytes == 16 * GIB - round(14.6 * GIB)


async def test_a_retried_sleep_measures_nothing(tmp_path: Path) -> None:
    log_file = tmp_path / "vllm.log"
    fake = FakeVLLM()
    fake.then["/sleep"] = [ASSERTION]
    fake.log_file, fake.on_sleep = log_file, [REPORT.format(0.0)]  # the repeat frees ~nothing
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as http:
        rig = Rig(fake, http, residual=ResidualMeter(log_file, 16 * GIB))
        rig.set(AgentState.AWAKE)
        assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert rig.board.freed_bytes is None and rig.board.residual_bytes is None


def test_the_meter_follows_a_rotated_log(tmp_path: Path) -> None:
    log_file = tmp_path / "vllm.log"
    log_file.write_text("x" * 100 + "\n")
    meter = ResidualMeter(log_file, None)
    meter.mark()
    with log_file.open("a") as f:
        f.write("first half\n")
    log_file.rename(tmp_path / "vllm.log.1")  # RotatingFileHandler's rollover
    log_file.write_text(REPORT.format(2.5) + "\n")
    assert meter.measure() == (round(2.5 * GIB), None)
    meter.mark()
    assert meter.measure() is None  # nothing new: no report


def test_no_log_file_no_measurement() -> None:
    meter = ResidualMeter(None, 1 << 30)
    meter.mark()
    assert meter.measure() is None and not meter.enabled


async def test_last_error_is_the_latest_transitions_and_clears_on_success(rig: Rig) -> None:
    rig.fake.then["/sleep"] = [httpx.Response(400, text="bad")]
    rig.set(AgentState.AWAKE)
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 502
    assert rig.board.last_error and "bad" in rig.board.last_error
    assert (await rig.t.sleep(1, drain_timeout=1)).status == 200
    assert rig.board.last_error is None


async def test_a_level_0_wake_that_erred_but_woke_pauses_and_releases_again(rig: Rig) -> None:
    rig.fake.sleeping = True
    rig.set(AgentState.ASLEEP, level=0)
    rig.fake.then["/wake_up"] = [httpx.Response(504, text="gateway timeout")]
    rig.fake.sleeping = False  # vLLM finished the remap after the client gave up
    out = await rig.t.wake()
    assert out.status == 502 and out.vllm_status == 504
    assert rig.fake.log[-3:] == [
        "/sleep?level=0&mode=wait",
        "/release_kv_cache_memory",
        "/is_sleeping",
    ]
    assert (rig.board.state, rig.board.level, rig.gate.mode) == (AgentState.ASLEEP, 0, Mode.HOLD)
