"""The agent's own Prometheus metrics, served on the control port's /metrics.

One CollectorRegistry per agent (vllm_sleep.metric_factory): the sim-kubelet runs many agents in
one process, and each must expose only its own pod's numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ..api.agent_protocol import REPORTED_STATES
from ..metric_factory import MetricFactory
from .gate import Gate
from .state import StateBoard

_PREFIX = "vllm_sleep_agent"
_TRANSITION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, float("inf"))
_HOLD_BUCKETS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, float("inf"))


class AgentMetrics:
    def __init__(self, gate: Gate, board: StateBoard) -> None:
        m = MetricFactory(f"{_PREFIX}_")
        self.registry = r = m.registry
        # One metric a line: name, help text, labels.
        # fmt: off
        self.transitions = m.counter("transitions", "Sleep and wake requests by outcome (ok, noop, conflict, not_idle, drain_timeout, error).", "kind", "result")
        self.transition_seconds = m.histogram("transition_duration_seconds", "Duration of successful sleeps (drain included) and wakes.", "kind", buckets=_TRANSITION_BUCKETS)
        self.drain_seconds = m.histogram("drain_duration_seconds", "Time from closing admission to zero requests in flight.", buckets=_TRANSITION_BUCKETS)
        self.hold_seconds = m.histogram("hold_duration_seconds", "How long inference requests waited for an awake engine, by outcome.", "outcome", buckets=_HOLD_BUCKETS)
        self.requests = m.counter("requests", "Requests on the public port: inference, passthrough, or denied (not allowlisted).", "kind")
        self.rejected = m.counter("requests_rejected", "Inference requests answered 503 without reaching vLLM, by reason.", "reason")
        self.upstream_errors = m.counter("upstream_errors", "Requests the agent could not complete with vLLM (connect or mid-response failure).")
        m.gauge("requests_inflight", "Inference requests vLLM is working on.").set_function(
            lambda: gate.inflight
        )
        m.gauge("requests_held", "Inference requests waiting for an awake engine.").set_function(
            lambda: gate.held
        )
        # fmt: on
        r.register(_StateCollector(board))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self, board: StateBoard) -> None:
        self._board = board

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{_PREFIX}_state", "1 for the engine's current state.", labels=["state"]
        )
        for state in REPORTED_STATES:
            family.add_metric([state.value], 1.0 if state is self._board.state else 0.0)
        yield family
        level = GaugeMetricFamily(
            f"{_PREFIX}_sleep_level", "Sleep level while asleep; absent when awake or unknown."
        )
        if self._board.level is not None:
            level.add_metric([], float(self._board.level))
        yield level
