"""docs/vllm.md "Endpoints" (vLLM 0.33.0, unchanged in 0.34) over real loopback HTTP: one test per
dev-endpoint row, on both profiles that have it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract


@pytest.fixture(params=["0.34", "0.33"])
async def engine(host: EngineHost, request: pytest.FixtureRequest) -> SimEngine:
    return await start(
        host,
        "org/model-8B",
        "--enable-sleep-mode",
        "--served-model-name",
        "m",
        env={"VLLM_SIM_PROFILE": request.param},
    )


@pytest.fixture
async def client(engine: SimEngine) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as c:
        yield c


def gauge(metrics: str, state: str) -> float:
    line = next(
        x
        for x in metrics.splitlines()
        if x.startswith("vllm:engine_sleep_state") and f'sleep_state="{state}"' in x
    )
    return float(line.rsplit(" ", 1)[1])


async def test_sleep_default_level_1_answers_json_after_release(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    r = await client.post("/sleep")
    assert r.status_code == 200
    assert r.json() == {"status": "sleeping", "level": 1}
    assert engine.asleep_tags == {"weights", "kv_cache"} and engine.level == 1
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
    metrics = (await client.get("/metrics")).text
    assert gauge(metrics, "weights_offloaded") == 1 and gauge(metrics, "awake") == 0


async def test_sleep_ignores_the_body(client: httpx.AsyncClient, engine: SimEngine) -> None:
    r = await client.post("/sleep", json={"level": 2})
    assert r.json() == {"status": "sleeping", "level": 1}
    assert engine.level == 1 and not engine.weights_discarded


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("level=3", "query.level"),
        ("level=-1", "query.level"),
        ("level=one", "query.level"),
        ("level=1&mode=drain", "query.mode"),
    ],
)
async def test_sleep_bad_params_are_400(
    client: httpx.AsyncClient, engine: SimEngine, query: str, param: str
) -> None:
    r = await client.post(f"/sleep?{query}")
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == 400 and err["type"] == "Bad Request"
    assert engine.state == "awake"


async def test_sleep_when_already_asleep_is_200_and_sets_gauge_to_requested_level(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/sleep?level=2")
    assert r.status_code == 200 and r.json() == {"status": "sleeping", "level": 2}
    assert engine.level == 1 and not engine.weights_discarded  # memory unchanged
    metrics = (await client.get("/metrics")).text
    assert gauge(metrics, "discard_all") == 1 and gauge(metrics, "weights_offloaded") == 0


async def test_sleep_level_0_pauses_scheduling_only(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    held = engine.device.held_by(engine)
    assert (await client.post("/sleep?level=0")).json() == {"status": "sleeping", "level": 0}
    assert (await client.get("/is_sleeping")).json()["is_sleeping"] is True
    assert engine.device.held_by(engine) == held
    metrics = (await client.get("/metrics")).text
    assert all(gauge(metrics, s) == 0 for s in ("awake", "weights_offloaded", "discard_all"))
    r = await client.post("/wake_up?tags=scheduling")
    assert r.json() == {"status": "awake", "tags": ["scheduling"]}
    assert (await client.get("/is_sleeping")).json()["is_sleeping"] is False


async def test_wake_up_without_tags_wakes_everything(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/wake_up")
    assert r.status_code == 200 and r.json() == {"status": "awake", "tags": None}
    assert engine.state == "awake" and engine.device.held_by(engine) == engine.share
    assert gauge((await client.get("/metrics")).text, "awake") == 1


async def test_partial_wake_answers_sleeping_and_keeps_gauge(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/wake_up", params={"tags": "weights"})
    assert r.json() == {"status": "sleeping", "tags": ["weights"]}
    assert engine.asleep_tags == {"kv_cache"}
    assert (
        gauge((await client.get("/metrics")).text, "weights_offloaded") == 1
    )  # ≥0.31: full wake only
    r = await client.post("/wake_up", params=[("tags", "kv_cache")])
    assert r.json() == {"status": "awake", "tags": ["kv_cache"]}


async def test_wake_up_with_repeated_tags(client: httpx.AsyncClient, engine: SimEngine) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/wake_up", params=[("tags", "weights"), ("tags", "kv_cache")])
    assert r.json() == {"status": "awake", "tags": ["weights", "kv_cache"]}


@pytest.mark.parametrize(
    "query", ["tags=bogus", "tags=weights,kv_cache", "tags=weights&tags=bogus"]
)
async def test_wake_up_unknown_tag_wakes_nothing(
    client: httpx.AsyncClient, engine: SimEngine, query: str
) -> None:
    await client.post("/sleep?level=1")
    r = await client.post(f"/wake_up?{query}")
    assert r.status_code == 200 and r.json()["status"] == "sleeping"
    assert engine.asleep_tags == {"weights", "kv_cache"}


async def test_wake_up_when_awake_is_200_awake(client: httpx.AsyncClient) -> None:
    r = await client.post("/wake_up")
    assert r.status_code == 200 and r.json() == {"status": "awake", "tags": None}


async def test_is_sleeping_true_while_paused(client: httpx.AsyncClient) -> None:
    assert (await client.post("/pause?mode=keep")).json() == {"status": "paused"}
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": True}
    assert (await client.get("/is_paused")).json() == {"is_paused": True}
    assert (await client.post("/resume")).json() == {"status": "resumed"}
    assert (await client.get("/is_sleeping")).json() == {"is_sleeping": False}


async def test_release_kv_cache_memory_needs_a_pause(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    r = await client.post("/release_kv_cache_memory")
    assert (
        r.status_code == 500 and "requires a completed pause first" in r.json()["error"]["message"]
    )
    await client.post("/sleep?level=0")
    r = await client.post("/release_kv_cache_memory")
    assert r.status_code == 200 and r.json() == {"status": "kv_cache_released"}
    assert engine.device.held_by(engine) == engine.share - engine.kv_dev
    assert (await client.post("/wake_up?tags=kv_cache")).json()["status"] == "awake"


async def test_release_kv_cache_memory_needs_resident_memory(client: httpx.AsyncClient) -> None:
    await client.post("/sleep?level=1")
    r = await client.post("/release_kv_cache_memory")
    assert (
        r.status_code == 500
        and "requires all executor memory to be resident" in r.json()["error"]["message"]
    )


async def test_reset_prefix_cache(client: httpx.AsyncClient) -> None:
    r = await client.post("/reset_prefix_cache")
    assert r.status_code == 200 and r.json() == {"success": True}
    assert (await client.post("/reset_mm_cache")).status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "JSON decode error"),
        (b"[1]", "Request body must be a JSON object"),
        (b"{}", "Missing 'method' in request body"),
    ],
)
async def test_collective_rpc_bad_bodies_are_400(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    r = await client.post("/collective_rpc", content=body)
    assert r.status_code == 400 and message in r.json()["error"]["message"]


async def test_collective_rpc_reload_weights_and_unknown_method(client: httpx.AsyncClient) -> None:
    r = await client.post("/collective_rpc", json={"method": "reload_weights"})
    assert r.status_code == 200 and r.json() == {"results": [None]}
    r = await client.post("/collective_rpc", json={"method": "no_such"})
    assert r.status_code == 500 and r.json()["error"]["message"].startswith(
        "Call to `collective_rpc` method failed"
    )


async def test_server_info(client: httpx.AsyncClient) -> None:
    r = await client.get("/server_info?config_format=json")
    assert r.status_code == 200 and {"vllm_config", "vllm_env", "system_env"} <= set(r.json())
    assert (await client.get("/server_info?config_format=yaml")).status_code == 400


async def test_abort_requests_empty_aborts_everything(client: httpx.AsyncClient) -> None:
    r = await client.post("/abort_requests", json={})
    assert r.json() == {"status": "aborted", "aborted": 0}


async def test_health_models_metrics_answer_while_asleep(client: httpx.AsyncClient) -> None:
    await client.post("/sleep?level=1")
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/health")).content == b""
    assert [m["id"] for m in (await client.get("/v1/models")).json()["data"]] == ["m"]
    assert "vllm:num_requests_running" in (await client.get("/metrics")).text


async def test_sleep_mode_metrics_are_created_lazily(client: httpx.AsyncClient) -> None:
    assert "vllm:sleep_mode_operation_duration_seconds" not in (await client.get("/metrics")).text
    await client.post("/sleep?level=1")
    await client.post("/wake_up")
    text = (await client.get("/metrics")).text
    assert 'vllm:sleep_mode_operation_duration_seconds_count{operation="sleep"} 1' in text
    assert 'vllm:sleep_mode_operations_in_flight{operation="wake"} 0' in text


DEV_PATHS = [
    ("POST", "/sleep"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"),
    ("GET", "/server_info"),
    ("POST", "/release_kv_cache_memory"),
    ("POST", "/pause"),
    ("POST", "/resume"),
    ("GET", "/is_paused"),
]


async def test_dev_routes_are_404_without_dev_mode(host: EngineHost) -> None:
    engine = await start(host, "m", "--enable-sleep-mode", dev_mode=False)
    async with httpx.AsyncClient(base_url=engine.url) as c:
        for method, path in DEV_PATHS:
            r = await c.request(method, path)
            assert (r.status_code, r.json()) == (404, {"detail": "Not Found"}), path
        assert (await c.get("/health")).status_code == 200
        assert (await c.get("/load")).json() == {"server_load": 0}
    assert engine.state == "awake"


async def test_unknown_path_and_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nope")).json() == {"detail": "Not Found"}
    r = await client.get("/sleep")
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}


async def test_sim_state_and_violations_endpoints(
    client: httpx.AsyncClient, engine: SimEngine
) -> None:
    assert (await client.get("/_sim/violations")).json() == {"count": 0, "violations": []}
    state = (await client.get("/_sim/state")).json()
    assert state["state"] == "awake" and state["profile"] == engine.cfg.profile
    assert state["memory"]["residual_bytes"] == engine.residual
