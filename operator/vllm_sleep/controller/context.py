"""Everything the operator's handlers share, built once by `main` and passed down (no globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..api.model_status import ModelPhase as Phase
from ..metrics import OperatorMetrics
from ..reconcile.lifecycle import ModelPolicy
from .agents import AgentClient
from .kube import Kube
from .podcache import PodCache


@dataclass(frozen=True)
class Settings:
    agent_image: str
    resync_seconds: float = 30.0  # upper bound between passes even when nothing kicks


@dataclass
class Context:
    settings: Settings
    kube: Kube
    agents: AgentClient
    metrics: OperatorMetrics
    children: Any  # controller.children.Children
    parse: Callable[[dict[str, Any]], Any]  # body -> api model (raises ValueError with a message)
    policy: Callable[[Any], ModelPolicy]
    drain_timeout: Callable[[Any], float] = lambda _model: 120.0  # model -> seconds
    demand: dict[tuple[str, str], float] = field(default_factory=dict)  # (ns, model) -> renewTime
    # (ns, model) -> ModelController
    controllers: dict[tuple[str, str], Any] = field(default_factory=dict)
    pods: PodCache = field(default_factory=PodCache)

    def record_transition(
        self, namespace: str, model: str, what: str, level: int, seconds: float
    ) -> None:
        self.metrics.transitions.labels(namespace, model, what, "ok").inc()
        self.metrics.transition_seconds.labels(what, str(level)).observe(seconds)

    def set_phase(self, namespace: str, model: str, phase: str) -> None:
        self.metrics.set_phase(namespace, model, phase, [p.value for p in Phase])

    def forget_model(self, namespace: str, model: str) -> None:
        self.metrics.forget(namespace, model, [p.value for p in Phase])

    def signal_demand(self, namespace: str, model: str, renew_time: float) -> None:
        key = (namespace, model)
        if renew_time > self.demand.get(key, 0.0):
            self.demand[key] = renew_time
            self.metrics.demand_signals.labels(namespace, model).inc()
            controller = self.controllers.get(key)
            if controller is not None:
                controller.kick.set()
