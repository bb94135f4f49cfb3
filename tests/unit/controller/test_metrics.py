"""The operator's metrics forget a deleted model."""

from __future__ import annotations


def test_forgetting_a_model_drops_its_phase_series() -> None:
    from prometheus_client import generate_latest

    from vllm_sleep.api.model_status import ModelPhase as Phase
    from vllm_sleep.metrics import OperatorMetrics

    m = OperatorMetrics()
    phases = [p.value for p in Phase]
    m.set_phase("ns", "gone", "Asleep", phases)
    assert b'model="gone"' in generate_latest(m.registry)
    m.forget("ns", "gone", phases)
    assert b'model="gone"' not in generate_latest(m.registry)
