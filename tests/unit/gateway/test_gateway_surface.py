"""The gateway's public surface, pure parts: where a per-pod utility goes (any pod up, awake
preferred), and what /v1/models says about a ModelDeployment (vLLM's `root`, `max_model_len`)."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL
from vllm_sleep.gateway.kube_parse import model_spec, pod_state
from vllm_sleep.gateway.routing import ModelKey, ModelSpec, ModelTable, PodState, Replica
from vllm_sleep.gateway.server import _model_entry

NS = "team"
KEY = ModelKey(NS, "m")


def make_pod(**over: Any) -> dict[str, Any]:
    """A loaded, awake model pod as the apiserver lists it; `section__field=value` overrides."""
    pod: dict[str, Any] = {
        "metadata": {"name": "m-0", "namespace": NS, "labels": {LABEL_MODEL: "m"}},
        "status": {
            "phase": "Running",
            "podIP": "127.0.9.3",
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": CONDITION_AWAKE, "status": "True"},
            ],
        },
    }
    for k, v in over.items():
        section, field = k.split("__")
        pod[section][field] = v
    return pod


def mdep(spec: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"image": "vllm/vllm-openai:v0.11.0", "model": "org/m"}
    body["resources"] = {"gpuMemoryUtilization": 0.5, "weightsSize": "1Gi"}
    return {"metadata": {"name": "m", "namespace": NS}, "spec": {**body, **spec}}


def table_with(*pods: PodState) -> ModelTable:
    t = ModelTable()
    t.upsert_model(ModelSpec(KEY, "m"))
    for p in pods:
        t.upsert_pod(p)
    return t


def up(i: int, *, awake: bool = False, hold: bool = False, url: bool = True) -> PodState:
    address = f"http://127.0.0.{i + 1}:8000" if url else ""
    return PodState(NS, f"m-{i}", "m", address, awake, hold, up=True)


def test_a_utility_goes_to_an_awake_replica_first() -> None:
    t = table_with(up(0), up(1, awake=True), up(2, hold=True))
    assert t.choose_up(KEY) == Replica((NS, "m-1"), "http://127.0.0.2:8000")


def test_a_utility_goes_to_an_asleep_pod_when_none_is_awake_least_in_flight_then_name() -> None:
    t = table_with(up(0), up(1, hold=True))
    first = t.choose_up(KEY)
    assert first is not None and first.pod == (NS, "m-0")
    t.acquire(first)
    second = t.choose_up(KEY)
    assert second is not None and second.pod == (NS, "m-1")
    assert t.choose_up(KEY, frozenset({(NS, "m-0"), (NS, "m-1")})) is None


def test_a_utility_has_nowhere_to_go_without_a_pod_up_with_an_address() -> None:
    down = PodState(NS, "m-0", "m", "http://127.0.0.1:8000", False)  # loading: not up
    assert table_with(down, up(1, url=False)).choose_up(KEY) is None
    assert table_with().choose_up(ModelKey(NS, "other")) is None


def test_a_loaded_pod_is_up_whatever_its_sleep_state() -> None:
    for awake in ("True", "False"):
        conds = [
            {"type": "ContainersReady", "status": "True"},
            {"type": CONDITION_AWAKE, "status": awake},
        ]
        p = pod_state(make_pod(status__conditions=conds), 8000)
        assert p is not None and p.up
    # No awake condition yet (the operator's first pass is still to come): up all the same.
    fresh = pod_state(make_pod(status__conditions=[{"type": "Ready", "status": "True"}]), 8000)
    assert fresh is not None and fresh.up and not fresh.awake and not fresh.can_hold


@pytest.mark.parametrize(
    "over",
    [
        {"metadata__deletionTimestamp": "2026-01-01T00:00:00Z"},
        {"status__podIP": ""},
        {"status__phase": "Pending"},
        {"status__conditions": [{"type": "ContainersReady", "status": "False"}]},
    ],
)
def test_a_pod_not_loaded_or_terminating_is_not_up(over: dict[str, Any]) -> None:
    p = pod_state(make_pod(**over), 8000)
    assert p is not None and not p.up


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], None),  # the model's config decides: only the engine knows
        (["--max-model-len", "4096"], 4096),
        (["--max-model-len=32k"], 32000),
        (["--max_model_len", "8K"], 8192),
        (["--max-model-len", "1024", "--enforce-eager", "--max-model-len", "2048"], 2048),
        (["--max-model-len", "-1"], None),  # the most that fits: the engine works it out
        (["--max-model-len", "auto"], None),
        (["--max-model-len"], None),
    ],
)
def test_models_entry_says_what_vllm_serves_and_its_context_only_when_the_spec_says_it(
    args: list[str], expected: int | None
) -> None:
    spec = model_spec(mdep({"model": "org/llama-8b", "servedModelName": "llama", "args": args}))
    assert spec is not None
    entry = _model_entry(spec, awake=0)
    assert (entry["id"], entry["root"], entry["parent"]) == ("llama", "org/llama-8b", None)
    assert entry.get("max_model_len") == expected
    assert ("max_model_len" in entry) is (expected is not None)  # omitted, never invented
    assert entry["object"] == "model" and entry["state"] == "Pending"
