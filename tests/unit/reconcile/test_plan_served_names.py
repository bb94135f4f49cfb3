"""A ModelDeployment the gateway refuses its served name says so: Degraded, not Ready, one Event."""

from __future__ import annotations

import pytest
from planning import body, observed

from vllm_sleep.api.served_names import Claim, RefusalReason, resolve
from vllm_sleep.reconcile.plan import plan

pytestmark = pytest.mark.unit

REFUSAL = resolve(
    [Claim("team-a", "qwen", "m", created=1.0), Claim("ns", "m", "m", created=2.0)]
).refused[("ns", "m")]


def _conditions(status: object) -> dict[str, dict[str, str]]:
    return {c["type"]: c for c in status["conditions"]}  # type: ignore[index]


def test_a_refused_name_is_degraded_with_its_reason_and_not_ready() -> None:
    p = plan(observed(body(), name_refusal=REFUSAL))
    conds = _conditions(p.status)
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == RefusalReason.CONFLICT.value
    assert "team-a/qwen" in conds["Degraded"]["message"]
    assert conds["Ready"]["status"] == "False"
    assert [e.reason for e in p.events] == ["ServedNameConflict"]


def test_the_refusal_event_is_posted_once() -> None:
    first = plan(observed(body(), name_refusal=REFUSAL))
    again = plan(observed(body(), name_refusal=REFUSAL, reported=first.reported))
    assert again.events == ()
    assert _conditions(again.status)["Degraded"]["status"] == "True"


def test_without_a_refusal_the_model_is_not_degraded() -> None:
    first = plan(observed(body(), name_refusal=REFUSAL))
    cleared = plan(observed(body(), reported=first.reported))
    assert _conditions(cleared.status)["Degraded"]["reason"] == "AsExpected"
    assert cleared.reported.name_refusal is None
