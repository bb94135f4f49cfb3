"""The `0.34` profile (docs/vllm.md "vLLM 0.34"): reset_connector, /checkpoint/*, the extensible KV cache,
and level 2 that loses a speculative model's draft."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_sleep.api import ModelDeploymentSpec, names
from vllm_sleep.reconcile import builders
from vllm_sleep.testing.sim import EngineHost, GiB, SimEngine
from vllm_sleep.testing.sim.testkit import start

pytestmark = pytest.mark.contract

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def kinds(engine: SimEngine) -> list[str]:
    return [v.kind for v in engine.violations]


async def engine_034(host: EngineHost, *args: str, **kw: object) -> SimEngine:
    return await start(
        host, "org/model-8B", "--enable-sleep-mode", "--served-model-name", "m", *args, **kw
    )  # type: ignore[arg-type]


async def test_version_is_0_34_by_default(host: EngineHost) -> None:
    e = await engine_034(host)
    async with httpx.AsyncClient(base_url=e.url) as c:
        assert (await c.get("/version")).json() == {"version": "0.34.0"}
    assert e.cfg.profile == "0.34"


@pytest.mark.parametrize("value", ["false", "False", "0", "no"])
async def test_reset_connector_false_is_accepted_on_sleep_and_release(
    host: EngineHost, value: str
) -> None:
    e = await engine_034(host, "--gpu-memory-utilization", "0.5")
    async with httpx.AsyncClient(base_url=e.url) as c:
        r = await c.post(f"/sleep?level=0&reset_connector={value}")
        assert r.json() == {"status": "sleeping", "level": 0}
        assert (await c.get("/_sim/state")).json()["reset_connector"] is False
        r = await c.post("/release_kv_cache_memory?reset_connector=true")
        assert r.json() == {"status": "kv_cache_released"}
        assert e.reset_connector is True


async def test_reset_connector_must_be_a_bool(host: EngineHost) -> None:
    e = await engine_034(host, "--gpu-memory-utilization", "0.5")
    async with httpx.AsyncClient(base_url=e.url) as c:
        for path in ("/sleep?reset_connector=maybe", "/release_kv_cache_memory?reset_connector=2"):
            r = await c.post(path)
            assert r.status_code == 400, path
            assert r.json()["error"]["param"] == "query.reset_connector"
    assert e.state == "awake"


async def test_reset_connector_is_ignored_before_0_34(host: EngineHost) -> None:
    e = await engine_034(host, env={"VLLM_SIM_PROFILE": "0.33"})
    async with httpx.AsyncClient(base_url=e.url) as c:
        r = await c.post("/sleep?reset_connector=maybe")
    assert r.json() == {"status": "sleeping", "level": 1} and e.reset_connector is None


CHECKPOINT = [
    ("POST", "/checkpoint/prepare"),
    ("POST", "/checkpoint/restore"),
    ("GET", "/checkpoint/status"),
]


async def test_checkpoint_routes_need_sleep_mode_not_dev_mode(host: EngineHost) -> None:
    with_sleep = await start(host, "m", "--enable-sleep-mode", dev_mode=False)
    without = await start(host, "m")
    older = await start(host, "m", "--enable-sleep-mode", env={"VLLM_SIM_PROFILE": "0.33"})
    for engine, found in [(with_sleep, True), (without, False), (older, False)]:
        async with httpx.AsyncClient(base_url=engine.url) as c:
            r = await c.get("/checkpoint/status")
            if found:
                assert r.json() == {"state": "RUNNING"}
            else:
                assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})


async def test_checkpoint_is_not_behind_the_api_key(host: EngineHost) -> None:
    e = await start(host, "m", "--enable-sleep-mode", "--api-key", "k", dev_mode=False)
    async with httpx.AsyncClient(base_url=e.url) as c:
        assert (await c.post("/v1/completions", json={"prompt": "x"})).status_code == 401
        assert (await c.post("/checkpoint/prepare")).json() == {"state": "PREPARED"}


async def test_prepare_pauses_releases_kv_and_refuses_sleep_and_wake(host: EngineHost) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    e = await engine_034(host, "--gpu-memory-utilization", "0.5", device=gpu)
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        assert (await c.post("/checkpoint/prepare")).json() == {"state": "PREPARED"}
        assert (await c.post("/checkpoint/prepare")).json() == {"state": "PREPARED"}
        assert (await c.get("/checkpoint/status")).json() == {"state": "PREPARED"}
        assert gpu.held_by(e) == e.share - e.kv_dev  # the KV cache is released
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503
        assert (
            r.json()["error"]["message"] == "Generation is paused. Please retry after it resumes."
        )
        for path in ("/sleep?level=1", "/wake_up"):
            r = await c.post(path)
            assert r.status_code == 500, path
            assert "checkpoint" in r.json()["error"]["message"]
        assert (await c.post("/checkpoint/restore")).json() == {"state": "RUNNING"}
        assert gpu.held_by(e) == e.share
        assert (await c.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await c.post("/sleep?level=1")).status_code == 200
    assert e.violations == []


async def test_prepare_while_asleep_fails(host: EngineHost) -> None:
    e = await engine_034(host, "--gpu-memory-utilization", "0.5")
    async with httpx.AsyncClient(base_url=e.url) as c:
        await c.post("/sleep?level=1")
        r = await c.post("/checkpoint/prepare")
        assert r.status_code == 500 and e.checkpoint == "RUNNING"


async def test_an_engine_without_a_share_takes_nearly_all_free_memory(host: EngineHost) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    a = await start(host, "a", "--gpu-memory-utilization", "0.3", device=gpu)
    b = await start(host, "b", "--weights-size", "16Gi", device=gpu)  # no share: extensible
    assert b.state == "awake" and b.cfg.util == 1.0
    assert gpu.free_bytes == b.cfg.kv_margin_bytes == GiB
    assert b.kv_dev == 80 * GiB - gpu.held_by(a) - b.residual - 16 * GiB - GiB
    async with httpx.AsyncClient(base_url=b.url) as c:
        state = (await c.get("/_sim/state")).json()
    assert state["memory"]["extensible_kv"] is True


async def test_without_a_share_a_sleeping_neighbour_cannot_wake(host: EngineHost) -> None:
    """What 0.34's default does to a shared GPU, and why the operator always passes a share."""
    gpu = host.device("n/gpu-0", 80 * GiB)
    a = await start(host, "a", device=gpu)
    async with httpx.AsyncClient(base_url=a.url) as c:
        assert (await c.post("/sleep?level=1")).status_code == 200
        b = await start(host, "b", device=gpu)
        assert b.state == "awake"  # no startup check: it takes what a freed
        assert (await c.post("/wake_up")).status_code == 500
    assert kinds(a) == ["wake_oom"]


async def test_a_second_engine_without_a_share_fails_to_start(host: EngineHost) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    await start(host, "a", device=gpu)
    b = await start(host, "b", device=gpu)
    assert b.state == "failed" and b.failure is not None
    assert b.failure.startswith("CUDA out of memory during startup")


async def test_kv_cache_memory_bytes_fixes_the_size_and_restores_the_check(
    host: EngineHost,
) -> None:
    gpu = host.device("n/gpu-0", 80 * GiB)
    args = ("--weights-size", "16Gi", "--kv-cache-memory-bytes", "20Gi")
    a = await start(host, "a", *args, "--gpu-memory-utilization", "0.48", device=gpu)
    assert gpu.held_by(a) == a.residual + 16 * GiB + 20 * GiB
    assert not a.cfg.extensible_kv
    # the check still wants total x util free: the default 0.92 cannot pass next to `a`
    b = await start(host, "b", *args, device=gpu)
    assert b.state == "failed" and b.failure is not None
    assert "(0.92, 73.60 GiB)" in b.failure
    c = await start(host, "c", *args, "--gpu-memory-utilization", "0.48", device=gpu)
    assert c.state == "awake" and gpu.held_by(c) == gpu.held_by(a)


@pytest.mark.parametrize(
    ("profile", "preserve", "lost"),
    [
        ("0.34", (), True),
        ("0.34", ("--sleep-preserve-parameter-names", "draft.*"), False),
        ("0.33", (), False),
    ],
)
async def test_level_2_loses_the_draft_model_unless_preserved(
    host: EngineHost, profile: str, preserve: tuple[str, ...], lost: bool
) -> None:
    spec = '{"model": "org/draft-1B", "num_speculative_tokens": 4}'
    e = await engine_034(
        host,
        "--speculative-config",
        spec,
        *preserve,
        env={"VLLM_SIM_PROFILE": profile},
    )
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        await c.post("/sleep?level=2")
        await c.post("/wake_up?tags=weights")
        await c.post("/collective_rpc", json={"method": "reload_weights"})
        await c.post("/wake_up?tags=kv_cache")
        r = await c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 200
        assert (await c.get("/_sim/state")).json()["draft_discarded"] is lost
    assert kinds(e) == (["draft_model_lost"] if lost else [])


async def test_level_1_keeps_the_draft(host: EngineHost) -> None:
    e = await engine_034(host, "--speculative-model", "org/draft-1B")
    async with httpx.AsyncClient(base_url=e.url, timeout=10) as c:
        await c.post("/sleep?level=1")
        await c.post("/wake_up")
        await asyncio.gather(*(c.post("/v1/chat/completions", json=CHAT) for _ in range(2)))
    assert not e.draft_discarded and e.violations == []


def pod_argv_env(name: str, resources: dict[str, object]) -> tuple[list[str], dict[str, str]]:
    """The vLLM command line and env the operator builds, minus where it listens."""
    spec = ModelDeploymentSpec.model_validate(
        {"model": f"org/{name}-8B", "image": "vllm/vllm-openai:v0.34.0", "resources": resources}
    )
    owner = builders.Owner(name=name, namespace="ns", uid=f"{name}-uid")
    pod = builders.model_pod(owner, spec, 0, agent_image="agent")
    c = pod["spec"]["containers"][0]
    argv, skip = [], False
    for a in c["args"]:
        if skip or a in ("--host", "--port"):
            skip = not skip
            continue
        argv.append(a)
    # The logging config is written by the pod's agent, which this test does not run.
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    env.pop(names.ENV_VLLM_LOGGING_CONFIG, None)
    return argv, env


@pytest.mark.parametrize(
    "resources",
    [
        {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
        {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi", "kvCacheSize": "16Gi"},
    ],
)
async def test_operator_built_engines_share_a_gpu_on_0_34(
    host: EngineHost, resources: dict[str, object]
) -> None:
    """Two models deployed without a vLLM memory flag of their own: the pods carry an explicit
    share, so on 0.34 both start, and each wakes while the other sleeps."""
    gpu = host.device("n/gpu-0", 80 * GiB)
    engines = []
    for name in ("a", "b"):
        argv, env = pod_argv_env(name, resources)
        engines.append(e := await start(host, *argv, device=gpu, env=env))
        assert e.state == "awake" and not e.cfg.extensible_kv
    a, b = engines
    async with httpx.AsyncClient(base_url=a.url) as ca, httpx.AsyncClient(base_url=b.url) as cb:
        for _ in range(2):
            assert (await ca.post("/sleep?level=1")).status_code == 200
            assert (await cb.post("/sleep?level=1")).status_code == 200
            assert (await ca.post("/wake_up")).status_code == 200
            assert (await ca.post("/sleep?level=1")).status_code == 200
            assert (await cb.post("/wake_up")).status_code == 200
    assert host.violations() == []
    assert host.pinned_bytes("n") == 32 * GiB  # both backups stay pinned on 0.34, awake or not
