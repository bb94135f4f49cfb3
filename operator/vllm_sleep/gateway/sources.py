"""Where the gateway learns models and replicas: the BackendSource seam.

`KubernetesSource` (kube_source.py) watches ModelDeployments and Pods; `StaticSource` is a fixed
model -> replica map a test or benchmark flips awake/asleep by hand. Both push the same events
into a `BackendSink` (the Router), so the data path cannot tell them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .routing import ModelKey, ModelSpec, PodState, WakePolicy


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
    """Models in one namespace with replica URLs given up front; awake state set by the test."""

    def __init__(self, namespace: str = "default") -> None:
        self.namespace = namespace
        self._specs: dict[str, ModelSpec] = {}
        self._pods: dict[tuple[str, str], PodState] = {}
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
    ) -> ModelKey:
        key = ModelKey(self.namespace, name)
        spec = ModelSpec(
            key,
            served_name or name,
            phase or ("Awake" if awake else "Asleep"),
            wake or WakePolicy(),
        )
        self._specs[name] = spec
        if self._sink is not None:
            self._sink.upsert_model(spec)
        for i, url in enumerate(urls):
            self._put(PodState(self.namespace, f"{name}-{i}", name, url.rstrip("/"), awake))
        return key

    def set_awake(self, name: str, awake: bool, replica: int | None = None) -> None:
        """Flip one replica (or all) of a model, as the operator's condition change would."""
        for pod in list(self._pods.values()):
            if pod.model == name and (replica is None or pod.name == f"{name}-{replica}"):
                self._put(PodState(pod.namespace, pod.name, pod.model, pod.url, awake))
        spec = self._specs[name]
        self._specs[name] = ModelSpec(
            spec.key, spec.served_name, "Awake" if awake else "Asleep", spec.wake
        )
        if self._sink is not None:
            self._sink.upsert_model(self._specs[name])

    def remove_replica(self, name: str, replica: int) -> None:
        pod = self._pods.pop((self.namespace, f"{name}-{replica}"), None)
        if pod is not None and self._sink is not None:
            self._sink.remove_pod(pod.namespace, pod.name)

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
