"""The contract table's RL weight-transfer rows, elastic EP and the remaining cache reset."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost, SimEngine
from vllm_sleep.testing.sim.testkit import start

WEIGHT_POSTS = [
    "/init_weight_transfer_engine",
    "/shutdown_weight_transfer_engine",
    "/start_weight_update",
    "/start_draft_weight_update",
    "/update_weights",
    "/finish_weight_update",
    "/update_weight_version",
]


@pytest.fixture
async def client(host: EngineHost) -> AsyncIterator[httpx.AsyncClient]:
    engine: SimEngine = await start(host, "org/model-8B", "--enable-sleep-mode")
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as c:
        yield c


@pytest.mark.parametrize("path", WEIGHT_POSTS)
async def test_weight_transfer_routes_take_json_objects(
    client: httpx.AsyncClient, path: str
) -> None:
    ok = await client.post(path, json={})
    assert ok.status_code == 200 and "message" in ok.json()
    for bad in (b"{not json", b"[1, 2]"):
        r = await client.post(path, content=bad, headers={"content-type": "application/json"})
        assert r.status_code == 400, (path, bad)
        assert r.json()["error"]["code"] == 400


async def test_update_weights_message(client: httpx.AsyncClient) -> None:
    assert (await client.post("/update_weights", json={"names": []})).json() == {
        "message": "Weights updated"
    }


@pytest.mark.parametrize("path", ["/weight_info", "/weight_checker", "/get_world_size"])
async def test_weight_info_routes(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_scale_elastic_ep(client: httpx.AsyncClient) -> None:
    r = await client.post("/scale_elastic_ep", json={"new_data_parallel_size": 2})
    assert r.json() == {"message": "Scaled to 2 data parallel engines"}
    for body in (
        {},
        {"new_data_parallel_size": 0},
        {"new_data_parallel_size": 2, "drain_timeout": -1},
    ):
        assert (await client.post("/scale_elastic_ep", json=body)).status_code == 400, body
    assert (await client.get("/is_scaling_elastic_ep")).json() == {"is_scaling_elastic_ep": False}


async def test_reset_encoder_cache(client: httpx.AsyncClient) -> None:
    r = await client.post("/reset_encoder_cache")
    assert r.status_code == 200 and r.content == b""


async def test_weight_routes_need_dev_mode_but_elastic_ep_does_not(host: EngineHost) -> None:
    engine = await start(host, "m", "--enable-sleep-mode", dev_mode=False)
    async with httpx.AsyncClient(base_url=engine.url, timeout=10) as c:
        for path in WEIGHT_POSTS:
            assert (await c.post(path, json={})).status_code == 404, path
        assert (
            await c.post("/scale_elastic_ep", json={"new_data_parallel_size": 1})
        ).status_code == 200
