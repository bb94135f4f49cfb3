"""Duplicate served names never move traffic: the oldest ModelDeployment keeps the name, a
newer one (in any namespace) is refused, logged and exported, until the owner is gone."""

from __future__ import annotations

import logging

import pytest

from vllm_sleep.api.served_names import ExposurePolicy, RefusalReason
from vllm_sleep.gateway import MemoryDemand
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.gateway.router import Router
from vllm_sleep.gateway.routing import ModelKey, ModelSpec, ModelTable

pytestmark = pytest.mark.unit

VICTIM = ModelSpec(ModelKey("team-b", "qwen"), "qwen-7b", created=1_700_000_000)
# Sorts first by namespace and name, but was created later: it must not take the name.
INTRUDER = ModelSpec(ModelKey("aaa", "grab"), "qwen-7b", created=1_700_000_500)


@pytest.mark.parametrize("order", ["victim-first", "intruder-first"])
def test_the_oldest_keeps_the_name_whatever_the_namespaces_sort_as(order: str) -> None:
    table = ModelTable()
    for spec in (VICTIM, INTRUDER) if order == "victim-first" else (INTRUDER, VICTIM):
        table.upsert_model(spec)
    assert table.lookup("qwen-7b") == VICTIM
    assert table.conflicts == {INTRUDER.key: VICTIM.key}
    assert [s.key for s in table.specs()] == [VICTIM.key]  # /v1/models lists the owner only


def test_a_relist_gives_the_same_owner() -> None:
    table = ModelTable()
    table.replace_all([INTRUDER, VICTIM], None)
    assert table.lookup("qwen-7b") == VICTIM and table.conflicts == {INTRUDER.key: VICTIM.key}


def test_the_name_passes_on_only_when_the_owner_is_gone() -> None:
    table = ModelTable()
    table.upsert_model(VICTIM)
    table.upsert_model(INTRUDER)
    table.remove_model(VICTIM.key)
    assert table.lookup("qwen-7b") == INTRUDER and table.conflicts == {}


def test_same_creation_second_falls_back_to_namespace_and_name() -> None:
    a = ModelSpec(ModelKey("a", "m"), "same", created=5)
    b = ModelSpec(ModelKey("b", "m"), "same", created=5)
    table = ModelTable()
    table.replace_all([b, a], None)
    assert table.lookup("same") == a and table.conflicts == {b.key: a.key}


def test_an_unknown_creation_time_never_wins_over_a_known_one() -> None:
    unknown = ModelSpec(ModelKey("aaa", "x"), "qwen-7b")  # created = 0
    table = ModelTable()
    table.replace_all([unknown, VICTIM], None)
    assert table.lookup("qwen-7b") == VICTIM


def test_the_router_logs_and_exports_each_conflict_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = GatewayMetrics()
    router = Router(MemoryDemand(), metrics, demand_interval=10.0)

    def gauge() -> float | None:
        return metrics.registry.get_sample_value(
            "vllm_sleep_gateway_served_name_conflicts",
            {
                "namespace": "aaa",
                "name": "grab",
                "served_name": "qwen-7b",
                "reason": "ServedNameConflict",
            },
        )

    caplog.set_level(logging.INFO, logger="vllm_sleep.gateway.router")
    router.upsert_model(VICTIM)
    router.upsert_model(INTRUDER)
    router.upsert_model(INTRUDER)  # an unrelated update: no second warning
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "aaa/grab" in warnings[0].getMessage()
    assert "team-b/qwen" in warnings[0].getMessage()
    assert gauge() == 1.0
    router.remove_model(INTRUDER.key)
    assert gauge() is None


def test_a_name_outside_the_exposure_policy_is_never_served() -> None:
    policy = ExposurePolicy.parse(["team-b=qwen-*", "aaa=grab-*"])
    table = ModelTable(policy)
    table.replace_all([INTRUDER, VICTIM], None)
    # The intruder's namespace may not serve "qwen-7b" at all; the victim keeps it.
    assert table.lookup("qwen-7b") == VICTIM
    assert table.refused[INTRUDER.key].reason == RefusalReason.NOT_EXPOSED
    assert table.conflicts == {}


def test_a_refused_owner_does_not_block_an_allowed_newcomer() -> None:
    # The older object is outside the policy: it never owned the name, so the newer one
    # (allowed) serves it instead of both being refused.
    policy = ExposurePolicy.parse(["aaa=qwen-*"])
    table = ModelTable(policy)
    table.replace_all([VICTIM, INTRUDER], None)
    assert table.lookup("qwen-7b") == INTRUDER
    assert set(table.refused) == {VICTIM.key}


def test_the_router_exports_policy_refusals_with_their_reason() -> None:
    metrics = GatewayMetrics()
    router = Router(
        MemoryDemand(),
        metrics,
        demand_interval=10.0,
        exposure=ExposurePolicy.parse(["team-b=other-*"]),
    )
    router.upsert_model(VICTIM)
    labels = {
        "namespace": "team-b",
        "name": "qwen",
        "served_name": "qwen-7b",
        "reason": "ServedNameNotExposed",
    }
    sample = "vllm_sleep_gateway_served_name_conflicts"
    assert metrics.registry.get_sample_value(sample, labels) == 1.0
    router.remove_model(VICTIM.key)
    assert metrics.registry.get_sample_value(sample, labels) is None
