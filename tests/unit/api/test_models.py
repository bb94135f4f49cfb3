"""The pydantic models: wire names, defaults, and errors that name the field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from vllm_sleep.api import (
    GPUPool,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ModelPhase,
    Sharing,
    SleepPolicy,
)

ROOT = Path(__file__).resolve().parents[3]


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "image": "vllm/vllm-openai:v0.33.0",
        "resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
    }
    base.update(over)
    return base


def test_defaults_match_the_design() -> None:
    s = ModelDeploymentSpec.model_validate(spec())
    assert s.replicas == 1
    assert s.sleep.level == 1 and s.sleep.policy == SleepPolicy.AUTO
    assert s.sleep.idle_timeout == timedelta(minutes=10)
    assert s.wake.on_request and s.wake.timeout == timedelta(minutes=2) and s.wake.max_queued == 256
    assert s.placement.pool is None and s.placement.min_awake == timedelta(0)
    assert s.resources.weights_size is not None and s.resources.weights_size.bytes() == 16 * 2**30
    assert s.served_name("llama-8b") == "llama-8b"


def test_wire_round_trip_is_camel_case_and_go_durations() -> None:
    s = ModelDeploymentSpec.model_validate(
        spec(sleep={"idleTimeout": "1h30m"}, placement={"pool": "h100", "minAwake": "30s"})
    )
    wire = s.to_wire()
    assert wire["sleep"]["idleTimeout"] == "1h30m"
    assert wire["placement"] == {"pool": "h100", "priority": 0, "minAwake": "30s"}
    assert wire["resources"]["weightsSize"] == "16Gi"
    assert ModelDeploymentSpec.model_validate(wire) == s


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"replicas": -1}, "replicas"),
        ({"resources": {"gpuMemoryUtilization": 0}}, "resources.gpuMemoryUtilization"),
        ({"resources": {"gpuMemoryUtilization": 1.2}}, "resources.gpuMemoryUtilization"),
        (
            {"resources": {"gpuMemoryUtilization": 0.5, "weightsSize": "16GB"}},
            "resources.weightsSize",
        ),
        ({"sleep": {"level": 3}}, "sleep.level"),
        ({"sleep": {"idleTimeout": "-5m"}}, "sleep.idleTimeout"),
        ({"sleep": {"idleTimeout": "10"}}, "sleep.idleTimeout"),
        ({"sleep": {"policy": "Sometimes"}}, "sleep.policy"),
        ({"wake": {"maxQueued": -1}}, "wake.maxQueued"),
        ({"servedModelName": "bad name"}, "servedModelName"),
        ({"env": [{"name": "A=B", "value": "x"}]}, "env.0.name"),
        ({"replicaz": 2}, "replicaz"),
    ],
)
def test_errors_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        ModelDeploymentSpec.model_validate(spec(**over))
    locs = [".".join(str(p) for p in e["loc"]) for e in err.value.errors()]
    assert any(loc.startswith(field) for loc in locs), locs


def test_model_deployment_from_body_ignores_server_metadata() -> None:
    body = {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
        "spec": spec(servedModelName="org/model"),
        "status": {
            "phase": "Asleep",
            "awake": "0/1",
            "replicas": [{"pod": "m-0", "node": None, "state": "Asleep", "level": 1}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "Asleep",
                    "message": "all replicas asleep",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    }
    m = ModelDeployment.from_body(body)
    assert m.served_model_name == "org/model"
    assert m.status is not None and m.status.phase == ModelPhase.ASLEEP


def test_status_phases_are_the_designed_ones() -> None:
    assert [p.value for p in ModelPhase] == [
        "Pending", "Loading", "Awake", "Draining", "Asleep", "Waking", "Failed"
    ]  # fmt: skip
    assert ModelDeploymentStatus().to_wire() == {"replicas": [], "conditions": []}


def test_gpu_pool_defaults() -> None:
    pool = GPUPool.from_body({"metadata": {"name": "h100"}, "spec": {"deviceMemory": "80Gi"}})
    assert pool.spec.sharing == Sharing.DRA
    assert pool.spec.device_memory.bytes() == 80 * 2**30
    assert str(pool.spec.sleep_residual) == "2Gi"


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "examples").glob("*.yaml")))
def test_examples_parse(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["kind"] == "ModelDeployment":
            ModelDeployment.from_body(doc)
        else:
            assert doc["kind"] == "GPUPool"
            GPUPool.from_body(doc)
