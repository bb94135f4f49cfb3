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


def test_an_event_of_an_unchanged_spec_resolves_nothing_again(monkeypatch: Any) -> None:
    import vllm_sleep.controller.served_names as module

    names = ServedNames()
    owner = {**OWNER, "metadata": {**OWNER["metadata"], "uid": "u1", "generation": 1}}
    newer = {**NEWER, "metadata": {**NEWER["metadata"], "uid": "u2", "generation": 1}}
    names.observe("ADDED", owner)
    names.observe("ADDED", newer)
    calls: list[int] = []
    real = module.resolve
    monkeypatch.setattr(module, "resolve", lambda *a: calls.append(1) or real(*a))
    # Status writes: same uid and generation, so the same claims and the same refusals.
    for _ in range(3):
        assert names.observe("MODIFIED", {**newer, "status": {"phase": "Asleep"}}) == set()
    assert calls == []
    assert names.refusal("aaa", "grab") is not None
    # A spec change (new generation) is resolved again: renamed away, the refusal goes.
    renamed = md("aaa", "grab", "other", "2026-12-02T00:00:00Z")
    renamed["metadata"].update(uid="u2", generation=2)
    assert names.observe("MODIFIED", renamed) == {("aaa", "grab")}
    assert calls == [1] and names.refusal("aaa", "grab") is None
