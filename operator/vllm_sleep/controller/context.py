"""Everything the operator's handlers share, built once by `main` and passed down (no globals)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..api.model_deployment import ModelDeployment
from ..api.model_status import ModelPhase as Phase
from ..metrics import OperatorMetrics
from .agents import AgentClient
from .children import Children
from .kube import Kube
from .nodes import NodeCache
from .podcache import PodCache
from .pools import Pools
from .served_names import ServedNames
from .settings import Settings

__all__ = ["Context", "Kickable", "Settings"]


class Kickable(Protocol):
    """A model's control loop, as the handlers see it: something to wake up."""

    kick: asyncio.Event


@dataclass
class Context:
    settings: Settings
    kube: Kube
    agents: AgentClient
    metrics: OperatorMetrics
    children: Children
    # A ModelDeployment body -> the typed model (raises ValueError with a message for an Event).
    parse: Callable[[Mapping[str, Any]], ModelDeployment]
    demand: dict[tuple[str, str], float] = field(default_factory=dict)  # (ns, model) -> renewTime
    controllers: dict[tuple[str, str], Kickable] = field(default_factory=dict)  # (ns, model)
    pods: PodCache = field(default_factory=PodCache)
    pools: Pools | None = None  # GPUPool actors (main makes them; None: no pool support)
    names: ServedNames = field(default_factory=ServedNames)  # who the gateway serves per name
    nodes: NodeCache = field(default_factory=NodeCache)  # nodes of pods whose agent is silent

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
