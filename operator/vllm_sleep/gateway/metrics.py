"""Prometheus metrics on a per-instance registry (several gateways can share one test process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from ..metric_factory import MetricFactory

UNKNOWN_MODEL = "_unknown"  # client-chosen names never become label values (cardinality)
CLIENT_CLOSED = "499"  # `code` of requests whose client left before an answer (nginx's code)

_HOLD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, *, worker: int | None = None
    ) -> None:
        m = MetricFactory("vllm_sleep_gateway_", registry)
        self.registry = m.registry
        # What /metrics shows: this registry, or with several worker processes every worker's
        # metric files merged (gateway/workers.py), so any worker answers for the whole gateway.
        self.exposed = self.registry
        self._requests: dict[tuple[str, str], Any] = {}
        self._upstream: dict[str, Any] = {}
        # One metric a line: name, help text, labels.
        # fmt: off
        self.requests = m.counter("requests", "Requests answered, by model and HTTP status", "model", "code")
        self.held = m.gauge("held_requests", "Requests waiting for a model to wake", "model", multiprocess_mode="livesum")
        self.hold_seconds = m.histogram("hold_seconds", "Time requests were held, by outcome", "outcome", buckets=_HOLD_BUCKETS)
        self.upstream_latency = m.histogram("upstream_latency_seconds", "Request sent to upstream response headers received (time to first byte)", "model", buckets=_LATENCY_BUCKETS)
        self.upstream_retries = m.counter("upstream_retries", "Requests moved to another replica, by reason", "reason")
        self.demand_signals = m.counter("demand_signals", "Demand Lease renewals, by result", "result")
        self.name_conflicts = m.gauge("served_name_conflicts", "1 for each ModelDeployment refused its servedModelName, by reason: ServedNameConflict (an older one serves it) or ServedNameNotExposed (--expose)", "namespace", "name", "served_name", "reason", multiprocess_mode="livemax")
        self.watch_restarts = m.counter("watch_restarts", "Watch relists, by resource", "resource")
        # fmt: on
        # With several worker processes (gateway/workers.py), one series per worker: how evenly
        # the kernel spreads connections over them. None with one process.
        self.worker_requests: Any = None
        if worker is not None:
            self.worker_requests = m.counter(
                "worker_requests", "Requests answered, by worker process", "worker"
            ).labels(str(worker))

    # The per-request series, with their label children cached: prometheus_client's
    # `labels()` takes a lock and builds a key on every call, on the proxy's hot path.

    def count_request(self, model: str, code: str) -> None:
        child = self._requests.get((model, code))
        if child is None:
            child = self._requests[(model, code)] = self.requests.labels(model, code)
        child.inc()

    def observe_upstream(self, model: str, seconds: float) -> None:
        child = self._upstream.get(model)
        if child is None:
            child = self._upstream[model] = self.upstream_latency.labels(model)
        child.observe(seconds)
