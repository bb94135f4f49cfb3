"""The operator's Prometheus metrics, on a registry owned by the process that serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from .metric_factory import MetricFactory

# Sleep/wake take from under a second (level-1 wake of a small model) to a minute (first sleep
# of a big one), so buckets span that range.
TRANSITION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_MODEL = ("namespace", "model")  # the labels of a per-model series


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        m = MetricFactory("vllm_sleep_", registry)
        self.registry = m.registry
        # One metric a line: name, help text, labels.
        # fmt: off
        self.transitions = m.counter("transitions_total", "Sleep and wake transitions by outcome", *_MODEL, "transition", "outcome")
        self.transition_seconds = m.histogram("transition_duration_seconds", "Duration of sleep and wake transitions as the agent reported them", "transition", "level", buckets=TRANSITION_BUCKETS)
        self.models_by_phase = m.gauge("models", "ModelDeployments by phase", *_MODEL, "phase")
        self.reconcile_errors = m.counter("reconcile_errors_total", "Errors while reconciling a model", *_MODEL)
        self.demand_signals = m.counter("demand_signals_total", "Demand Lease renewals seen", *_MODEL)
        self.leader = m.gauge("operator_leader", "1 while this replica acts (holds the leader Lease, or runs without leader election), 0 while it stands by")

        # GPU pools (docs/scheduler.md "In the operator").
        self.pool_evictions = m.counter("pool_evictions_total", "Awake replicas put to sleep to make room for a neighbour's wake or start", "pool")
        self.pool_swaps = m.counter("pool_swaps_total", "Wakes or starts that needed at least one eviction first", "pool")
        self.pool_swap_seconds = m.histogram("pool_swap_duration_seconds", "From a swap's first eviction to its target observed awake", "pool", buckets=TRANSITION_BUCKETS)
        self.pool_refusals = m.counter("pool_plan_refusals_total", "Replicas the pool could not wake or start: NotNow (held) or Never (too big)", "pool", "kind")
        # fmt: on

    def set_phase(self, namespace: str, model: str, phase: str, all_phases: list[str]) -> None:
        for p in all_phases:
            self.models_by_phase.labels(namespace, model, p).set(1 if p == phase else 0)

    def forget(self, namespace: str, model: str, all_phases: list[str]) -> None:
        for p in all_phases:
            try:
                self.models_by_phase.remove(namespace, model, p)
            except KeyError:
                pass
