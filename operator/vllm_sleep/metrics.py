"""The operator's Prometheus metrics, on a registry owned by the process that serves them."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Sleep/wake take from under a second (level-1 wake of a small model) to a minute (first sleep
# of a big one), so buckets span that range.
TRANSITION_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.transitions = Counter(
            "vllm_sleep_transitions_total",
            "Sleep and wake transitions by outcome",
            ["namespace", "model", "transition", "outcome"],
            registry=r,
        )
        self.transition_seconds = Histogram(
            "vllm_sleep_transition_duration_seconds",
            "Duration of sleep and wake transitions as the agent reported them",
            ["transition", "level"],
            buckets=TRANSITION_BUCKETS,
            registry=r,
        )
        self.models_by_phase = Gauge(
            "vllm_sleep_models",
            "ModelDeployments by phase",
            ["namespace", "model", "phase"],
            registry=r,
        )
        self.reconcile_errors = Counter(
            "vllm_sleep_reconcile_errors_total",
            "Errors while reconciling a model",
            ["namespace", "model"],
            registry=r,
        )
        self.demand_signals = Counter(
            "vllm_sleep_demand_signals_total",
            "Demand Lease renewals seen",
            ["namespace", "model"],
            registry=r,
        )

        # GPU pools (docs/scheduler.md "In the operator").
        self.pool_evictions = Counter(
            "vllm_sleep_pool_evictions_total",
            "Awake replicas put to sleep to make room for a neighbour's wake or start",
            ["pool"],
            registry=r,
        )
        self.pool_swaps = Counter(
            "vllm_sleep_pool_swaps_total",
            "Wakes or starts that needed at least one eviction first",
            ["pool"],
            registry=r,
        )
        self.pool_swap_seconds = Histogram(
            "vllm_sleep_pool_swap_duration_seconds",
            "From a swap's first eviction to its target observed awake",
            ["pool"],
            buckets=TRANSITION_BUCKETS,
            registry=r,
        )
        self.pool_refusals = Counter(
            "vllm_sleep_pool_plan_refusals_total",
            "Replicas the pool could not wake or start: NotNow (held) or Never (too big)",
            ["pool", "kind"],
            registry=r,
        )

    def set_phase(self, namespace: str, model: str, phase: str, all_phases: list[str]) -> None:
        for p in all_phases:
            self.models_by_phase.labels(namespace, model, p).set(1 if p == phase else 0)

    def forget(self, namespace: str, model: str, all_phases: list[str]) -> None:
        for p in all_phases:
            try:
                self.models_by_phase.remove(namespace, model, p)
            except KeyError:
                pass
