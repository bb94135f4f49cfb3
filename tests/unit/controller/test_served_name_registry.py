"""The operator's registry of served-name claims, fed by the ModelDeployment watch."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_sleep.api.served_names import ExposurePolicy, RefusalReason
from vllm_sleep.controller.served_names import ServedNames

pytestmark = pytest.mark.unit


def md(ns: str, name: str, served: str | None, created: str) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "org/x",
        "image": "vllm/vllm-openai:v0.34.0",
        "resources": {"gpuMemoryUtilization": 0.4, "weightsSize": "8Gi"},
    }
    if served:
        spec["servedModelName"] = served
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"namespace": ns, "name": name, "creationTimestamp": created},
        "spec": spec,
    }


OWNER = md("team-b", "qwen", "qwen-7b", "2026-12-01T00:00:00Z")
NEWER = md("aaa", "grab", "qwen-7b", "2026-12-02T00:00:00Z")


def test_the_newer_claim_is_refused_and_both_sides_are_kicked_on_changes() -> None:
    names = ServedNames()
    assert names.observe("ADDED", OWNER) == set()
    assert names.observe("ADDED", NEWER) == {("aaa", "grab")}
    refusal = names.refusal("aaa", "grab")
    assert refusal is not None and refusal.reason == RefusalReason.CONFLICT
    assert names.refusal("team-b", "qwen") is None
    # The owner leaves: the newcomer now serves the name, and is told so.
    assert names.observe("DELETED", OWNER) == {("aaa", "grab")}
    assert names.refusal("aaa", "grab") is None


def test_the_exposure_policy_refuses_names_outside_a_namespace_patterns() -> None:
    names = ServedNames(ExposurePolicy.parse(["team-b=qwen-*"]))
    names.observe("ADDED", NEWER)
    refusal = names.refusal("aaa", "grab")
    assert refusal is not None and refusal.reason == RefusalReason.NOT_EXPOSED


def test_an_invalid_object_claims_nothing() -> None:
    names = ServedNames()
    bad = md("aaa", "grab", "qwen-7b", "2026-12-02T00:00:00Z")
    bad["spec"]["replicas"] = -1
    names.observe("ADDED", OWNER)
    assert names.observe("ADDED", bad) == set()
    assert names.refusal("aaa", "grab") is None
