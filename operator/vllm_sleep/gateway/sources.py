"""Where the gateway learns models and replicas: the BackendSource seam.

`KubernetesSource` (kube_source.py) watches ModelDeployments and Pods; `StaticSource` is a fixed
model -> replica map a test or benchmark flips awake/asleep by hand. Both push the same events
into a `BackendSink` (the Router), so the data path cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from .routing import CannotWake, ModelKey, ModelSpec, PodState, WakePolicy


class BackendSink(Protocol):
    def upsert_model(self, spec: ModelSpec) -> None: ...
    def remove_model(self, key: ModelKey) -> None: ...
    def upsert_pod(self, pod: PodState) -> None: ...
    def remove_pod(self, namespace: str, name: str) -> None: ...
    def replace_models(self, specs: Sequence[ModelSpec]) -> None: ...
    def replace_pods(self, pods: Sequence[PodState]) -> None: ...


class BackendSource(Protocol):
    async def start(self, sink: BackendSink) -> None:
        """Deliver the first full state, then keep the sink current in the background."""
        ...

    async def stop(self) -> None: ...


class StaticSource:
    """Models in one namespace with replica URLs given up front; awake state set by the test.

    `can_hold=True` says the URLs are pod agents (they hold requests while not awake), so the
    gateway may send a held request to a replica that is not awake; plain fake upstreams are
    not, and the gateway then holds in its own queue.
    """

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self._specs: dict[str, ModelSpec] = {}
        self._pods: dict[tuple[str, str], PodState] = {}
        self._agents: set[tuple[str, str]] = set()  # pods added with can_hold=True
        self._sink: BackendSink | None = None

    def add_model(
        self,
        name: str,
        urls: Sequence[str],
        *,
        awake: bool = True,
        served_name: str | None = None,
        wake: WakePolicy | None = None,
        phase: str | None = None,
        can_hold: bool = False,
        cannot_wake: CannotWake | None = None,
    ) -> ModelKey:
        key = ModelKey(self.namespace, name)
        spec = ModelSpec(
            key,
            served_name or name,
            phase or ("Awake" if awake else "Asleep"),
            wake or WakePolicy(),
            cannot_wake=cannot_wake,
        )
        self._specs[name] = spec
        if self._sink is not None:
            self._sink.upsert_model(spec)
        for i, url in enumerate(urls):
            pod = PodState(self.namespace, f"{name}-{i}", name, url.rstrip("/"), awake)
            if can_hold:
                self._agents.add(pod.key)
            self._put(self._with_awake(pod, awake))
        return key

    def set_awake(self, name: str, awake: bool, replica: int | None = None) -> None:
        """Flip one replica (or all) of a model, as the operator's condition change would."""
        for pod in list(self._pods.values()):
            if pod.model == name and (replica is None or pod.name == f"{name}-{replica}"):
                self._put(self._with_awake(pod, awake))
        self._specs[name] = replace(self._specs[name], phase="Awake" if awake else "Asleep")
        if self._sink is not None:
            self._sink.upsert_model(self._specs[name])

    def set_cannot_wake(self, name: str, why: CannotWake | None) -> None:
        """What the operator's status says, as a status write of the ModelDeployment would."""
        self._specs[name] = replace(self._specs[name], cannot_wake=why)
        if self._sink is not None:
            self._sink.upsert_model(self._specs[name])

    def remove_replica(self, name: str, replica: int) -> None:
        pod = self._pods.pop((self.namespace, f"{name}-{replica}"), None)
        self._agents.discard((self.namespace, f"{name}-{replica}"))
        if pod is not None and self._sink is not None:
            self._sink.remove_pod(pod.namespace, pod.name)

    def _with_awake(self, pod: PodState, awake: bool) -> PodState:
        # An agent holds only while its engine is not awake, as kube_parse derives it. Every
        # static replica is up: its URL was given, asleep or not.
        can_hold = not awake and pod.key in self._agents
        return PodState(pod.namespace, pod.name, pod.model, pod.url, awake, can_hold, up=True)

    def _put(self, pod: PodState) -> None:
        self._pods[pod.key] = pod
        if self._sink is not None:
            self._sink.upsert_pod(pod)

    async def start(self, sink: BackendSink) -> None:
        self._sink = sink
        sink.replace_models(list(self._specs.values()))
        sink.replace_pods(list(self._pods.values()))

    async def stop(self) -> None:
        self._sink = None
