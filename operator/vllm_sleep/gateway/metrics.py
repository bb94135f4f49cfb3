"""Prometheus metrics on a per-instance registry (several gateways can share one test process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

UNKNOWN_MODEL = "_unknown"  # client-chosen names never become label values (cardinality)
CLIENT_CLOSED = "499"  # `code` of requests whose client left before an answer (nginx's code)

_HOLD_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._requests: dict[tuple[str, str], Any] = {}
        self._upstream: dict[str, Any] = {}
        r = self.registry
        self.requests = Counter(
            "vllm_sleep_gateway_requests",
            "Requests answered, by model and HTTP status",
            ["model", "code"],
            registry=r,
        )
        self.held = Gauge(
            "vllm_sleep_gateway_held_requests",
            "Requests waiting for a model to wake",
            ["model"],
            registry=r,
        )
        self.hold_seconds = Histogram(
            "vllm_sleep_gateway_hold_seconds",
            "Time requests were held, by outcome",
            ["outcome"],
            buckets=_HOLD_BUCKETS,
            registry=r,
        )
        self.upstream_latency = Histogram(
            "vllm_sleep_gateway_upstream_latency_seconds",
            "Request sent to upstream response headers received (time to first byte)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream_retries = Counter(
            "vllm_sleep_gateway_upstream_retries",
            "Requests moved to another replica, by reason",
            ["reason"],
            registry=r,
        )
        self.demand_signals = Counter(
            "vllm_sleep_gateway_demand_signals",
            "Demand Lease renewals, by result",
            ["result"],
            registry=r,
        )
        self.name_conflicts = Gauge(
            "vllm_sleep_gateway_served_name_conflicts",
            "1 for each ModelDeployment refused its servedModelName, by reason: "
            "ServedNameConflict (an older one serves it) or ServedNameNotExposed (--expose)",
            ["namespace", "name", "served_name", "reason"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "vllm_sleep_gateway_watch_restarts",
            "Watch relists, by resource",
            ["resource"],
            registry=r,
        )

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
