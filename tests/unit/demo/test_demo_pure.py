"""The demo's pure parts: manifests (and their committed copies), timing maths, status tracking."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from vllm_sleep.api.gpu_pool import GPUPool
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.demo import services
from vllm_sleep.demo.chat import parse_sse_line
from vllm_sleep.demo.cluster import parse_time_scale
from vllm_sleep.demo.models import (
    DEVICE_GIB,
    MODELS,
    POOL,
    POOL_NODE,
    by_name,
    engine_env,
    manifest,
    pool_manifest,
    real_equivalent_ttft,
    render_examples,
)
from vllm_sleep.demo.track import Tracker
from vllm_sleep.demo.view import explain
from vllm_sleep.testing.sim.config import DEFAULT_RESIDUAL, SimConfig
from vllm_sleep.testing.sim.units import GiB

ROOT = Path(__file__).resolve().parents[3]


def test_committed_examples_match_the_demo() -> None:
    folder = ROOT / "deploy" / "examples" / "demo"
    want = render_examples()
    got = {p.name: p.read_text() for p in folder.glob("*.yaml")}
    assert got == want, "run `vllm-sleep demo --write-examples deploy/examples/demo`"


@pytest.mark.parametrize("m", MODELS, ids=lambda m: m.name)
def test_manifests_are_valid_model_deployments(m: object) -> None:
    body = manifest(by_name(m.name), total_scale=0.1, host_scale=0.05)  # type: ignore[attr-defined]
    parsed = ModelDeployment.from_body(body)
    assert parsed.spec.sleep.level == 1
    assert parsed.spec.resources.weights_size is not None


def test_engine_env_makes_up_the_difference_to_the_host_scale() -> None:
    env = {e["name"]: e["value"] for e in engine_env(total_scale=0.1, host_scale=0.05)}
    assert env == {
        "VLLM_SIM_PROFILE": "legacy",
        "VLLM_SIM_TIME_SCALE": "2",
        "VLLM_SIM_ITL_SECONDS": "0.2",  # 0.02 s/token real pace, at x0.1
    }
    same = {e["name"] for e in engine_env(total_scale=0.1, host_scale=0.1)}
    assert "VLLM_SIM_TIME_SCALE" not in same


def test_the_simulator_reads_the_demo_env_as_intended() -> None:
    env = {e["name"]: e["value"] for e in engine_env(total_scale=0.1, host_scale=0.05)}
    cfg = SimConfig.from_cli(["meta-llama/Llama-3.1-8B-Instruct"], env)
    assert cfg.profile == "legacy"
    assert cfg.time_scale == pytest.approx(2.0)
    assert cfg.timing_overrides == {"itl": pytest.approx(0.2)}


def test_timings_are_the_simulators_model() -> None:
    llama = by_name("llama-8b")
    t = llama.timings
    assert t.load == pytest.approx(38.6, abs=0.05)  # docs/simulator.md, 16 GiB
    # 0.35 s for the weights plus mapping the KV cache (48 - 16 - 1.4 GiB) at ~0.75 ms/GiB.
    assert llama.kv_bytes == int(48 * GiB) - 16 * GiB - DEFAULT_RESIDUAL
    assert t.wake == pytest.approx(0.35 + 0.001 + 0.030 / 40 * 30.6, abs=0.01)
    assert t.first_sleep > 0.69 * 16  # legacy: PyTorch's pinned allocator pins the backup
    awake, asleep = llama.gpu_gib()
    assert awake == pytest.approx(48.0) and asleep == pytest.approx(1.4)


def test_one_model_awake_at_a_time_fits_the_device_two_do_not() -> None:
    """What the demo's swaps rest on: any one model awake beside the others asleep fits the
    80 GiB GPU; any two awake do not."""
    for m in MODELS:
        awake, _ = m.gpu_gib()
        others = [o.gpu_gib() for o in MODELS if o is not m]
        assert awake + sum(a for _, a in others) <= DEVICE_GIB
        assert all(awake + o_awake > DEVICE_GIB for o_awake, _ in others)


def test_the_models_are_placed_in_the_demo_pool_on_the_demo_node() -> None:
    pool = GPUPool.from_body(pool_manifest())
    assert pool.spec.node_selector == {"kubernetes.io/hostname": POOL_NODE}
    assert pool.spec.device_memory.bytes() == int(DEVICE_GIB * GiB)
    assert {t.key for t in pool.spec.tolerations} >= {"vllm-sleep.io/demo", "nvidia.com/gpu"}
    for m in MODELS:
        md = ModelDeployment.from_body(manifest(m, total_scale=0.1, host_scale=0.1))
        assert md.spec.placement.pool == POOL


def test_real_equivalent_ttft_adds_back_only_the_engine_time() -> None:
    llama = by_name("llama-8b")
    t = llama.timings
    # At x1 nothing was saved; at x0.1 the engine's wake + first token ran 10x fast.
    assert real_equivalent_ttft(0.5, llama, 1.0) == pytest.approx(0.5)
    assert real_equivalent_ttft(0.5, llama, 0.1) == pytest.approx(0.5 + 0.9 * (t.wake + t.ttft))


def test_sse_lines() -> None:
    assert parse_sse_line('data: {"choices":[{"delta":{"content":" hi"}}]}') == " hi"
    assert parse_sse_line('data: {"choices":[{"delta":{"role":"assistant"}}]}') == ""
    assert parse_sse_line("data: [DONE]") is None
    assert parse_sse_line(": keep-alive") == ""
    assert parse_sse_line("data: not json") == ""


def obj(name: str, phase: str | None, *states: str, last_sleep: float | None = None) -> dict:
    status: dict = {
        "replicas": [{"pod": f"{name}-0", "node": "gpu-node-0", "state": s} for s in states]
    }
    if phase:
        status["phase"] = phase
    if last_sleep is not None:
        status["lastSleepSeconds"] = last_sleep
    return {"metadata": {"name": name}, "status": status}


def test_tracker_records_transitions_once_and_first_seen_phases() -> None:
    tr = Tracker(("a", "b"), started=100.0)
    tr.update({"a": obj("a", None)}, 100.5)
    assert not tr.all_in("Asleep")  # b not seen yet
    tr.update({"a": obj("a", "Loading", "Loading"), "b": obj("b", "Loading", "Loading")}, 101)
    tr.update({"a": obj("a", "Loading", "Loading"), "b": obj("b", "Loading", "Loading")}, 102)
    tr.update({"a": obj("a", "Asleep", "Asleep"), "b": obj("b", "Draining", "Sleeping")}, 103)
    assert [(t.model, t.before, t.after) for t in tr.transitions] == [
        ("a", "-", "Pending"),
        ("a", "Pending", "Loading"),
        ("b", "-", "Loading"),
        ("a", "Loading", "Asleep"),
        ("b", "Loading", "Draining (pre-warm sleep)"),
    ]
    assert tr.first_seen[("a", "Asleep")] == pytest.approx(3.0)
    assert not tr.all_in("Asleep")
    tr.update({"a": obj("a", "Asleep", "Asleep"), "b": obj("b", "Asleep", "Asleep")}, 104)
    assert tr.all_in("Asleep") and tr.failed() == []


def test_a_status_older_than_the_spec_does_not_count() -> None:
    tr = Tracker(("a",), 0.0)
    stale = obj("a", "Asleep", "Asleep")
    stale["metadata"]["generation"] = 3
    stale["status"]["observedGeneration"] = 2  # `kubectl apply` changed the spec just now
    tr.update({"a": stale}, 1.0)
    assert not tr.all_in("Asleep") and tr.phase("a") is None
    stale["status"]["observedGeneration"] = 3
    tr.update({"a": stale}, 2.0)
    assert tr.all_in("Asleep") and tr.phase("a") == "Asleep"


def test_explain_calls_the_first_sleep_the_pre_warm() -> None:
    tr = Tracker(("a",), 0.0)
    tr.update({"a": obj("a", "Draining", "Sleeping")}, 1.0)
    assert explain(tr.views["a"]).startswith("pre-warm")
    tr.update({"a": obj("a", "Draining", "Sleeping", last_sleep=0.9)}, 2.0)
    assert not explain(tr.views["a"]).startswith("pre-warm")


def test_parse_time_scale() -> None:
    assert parse_time_scale(["python", "-m", "x", "--time-scale=0.05"]) == 0.05
    assert parse_time_scale(["x", "--time-scale", "0.2"]) == 0.2
    assert parse_time_scale(["x"]) is None


def test_services_are_reused_only_when_recorded_alive_and_tokens_fresh(tmp_path: Path) -> None:
    from vllm_sleep.testing.cluster.controlplane import ClusterState

    me = os.getpid()
    state = ClusterState(str(tmp_path), "kc", "https://x", {}, pids={"operator": me, "gateway": me})
    fresh = services.DemoState("http://g", me, me, time.time())
    assert services._reusable(fresh, state)
    stale = services.DemoState("http://g", me, me, time.time() - services.TOKEN_REFRESH_SECONDS)
    assert not services._reusable(stale, state)
    other = ClusterState(str(tmp_path), "kc", "https://x", {}, pids={"operator": me})
    assert not services._reusable(fresh, other)  # gateway not recorded in this cluster
    fresh.save(tmp_path)
    assert services.DemoState.load(tmp_path) == fresh


def test_where_shows_a_pooled_replicas_device_once() -> None:
    from vllm_sleep.demo.track import Replica
    from vllm_sleep.demo.view import where

    pooled = Replica("a-0", "demo-gpu-0", "demo-gpu-0/gpu-0", "Asleep", 1)
    assert where(pooled) == "demo-gpu-0/gpu-0"
    plain = Replica("a-0", "gpu-node-1", "gpu-1", "Awake", None)
    assert where(plain) == "gpu-node-1/gpu-1"
    assert where(Replica("a-0", "gpu-node-1", "-", "Pending", None)) == "gpu-node-1"


def test_try_next_shows_both_metrics_endpoints() -> None:
    from rich.console import Console

    from vllm_sleep.demo.view import next_steps

    panel = next_steps(
        "http://127.0.0.1:5000", "kc", "demo", "llama-8b", "kubectl", "vllm-sleep",
        operator_metrics_url="http://127.0.0.1:6000",
    )  # fmt: skip
    console = Console(width=200, record=True)
    console.print(panel)
    text = console.export_text()
    assert "curl -s http://127.0.0.1:5000/metrics" in text
    assert "curl -s http://127.0.0.1:6000/metrics" in text


def test_an_older_demos_state_file_still_loads(tmp_path: Path) -> None:
    (tmp_path / services.STATE_FILE).write_text(
        '{"gateway_url": "http://g", "operator_pid": 1, "gateway_pid": 2, "token_created": 3.0}'
    )
    state = services.DemoState.load(tmp_path)
    assert state is not None and state.operator_metrics_url == ""


def test_a_rerun_reports_only_the_violations_recorded_since_it_started() -> None:
    from vllm_sleep.demo.flow import recorded_since

    old = {"kind": "wake_oom", "at": 100.0}
    new = {"kind": "request_to_sleeping", "at": 200.0}
    undated = {"kind": "host_oom"}
    assert recorded_since([old, new, undated], 150.0) == [new, undated]
    assert recorded_since([old, new], None) == [old, new]
