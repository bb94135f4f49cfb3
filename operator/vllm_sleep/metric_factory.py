"""Declaring one process's Prometheus metrics, each in one call, on a registry of its own.

Never the global registry: tests run several gateways, and the sim-kubelet many agents, in one
process, and each must expose only its own numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class MetricFactory:
    """Metrics named `prefix` + name, on `registry` (a new one when None)."""

    def __init__(self, prefix: str, registry: CollectorRegistry | None = None) -> None:
        self.prefix = prefix
        self.registry = registry if registry is not None else CollectorRegistry()

    def counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(self.prefix + name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, *labels: str, multiprocess_mode: str = "all") -> Gauge:
        """`multiprocess_mode`: how a gauge of several processes merges (prometheus_client's
        multiprocess mode; the gateway's workers)."""
        return Gauge(
            self.prefix + name,
            doc,
            labels,
            registry=self.registry,
            multiprocess_mode=multiprocess_mode,  # type: ignore[arg-type]
        )

    def histogram(self, name: str, doc: str, *labels: str, buckets: Sequence[float]) -> Histogram:
        return Histogram(self.prefix + name, doc, labels, buckets=buckets, registry=self.registry)
