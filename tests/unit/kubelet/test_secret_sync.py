"""The sim-kubelet's periodic Secret-volume sync lists a namespace's Secrets once a round
instead of reading each pod's Secret on its own (a thousand pods, a thousand GETs a minute)."""

from __future__ import annotations

import base64
import json
from typing import Any

from kubernetes_asyncio import client

from vllm_sleep.testing.kubelet.kubelet import SimKubelet
from vllm_sleep.testing.kubelet.nodes import NodeSpec


class Answer:
    def __init__(self, body: Any) -> None:
        self.status = 200
        self._body = body

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    async def json(self) -> Any:
        return json.loads(json.dumps(self._body))


class Core:
    def __init__(self) -> None:
        self.lists: list[str] = []
        self.gets = 0

    async def list_namespaced_secret(self, namespace: str, **_: Any) -> Answer:
        self.lists.append(namespace)
        token = base64.b64encode(f"token-of-{namespace}".encode()).decode()
        return Answer({"items": [{"metadata": {"name": "tok"}, "data": {"token": token}}]})

    async def read_namespaced_secret(self, *_: Any, **__: Any) -> Answer:
        self.gets += 1
        raise AssertionError("a round reads no Secret on its own")


class Volumes:
    def __init__(self, namespace: str, seen: list[tuple[str, str | None]]) -> None:
        self.namespace = namespace
        self.seen = seen

    async def sync_secrets(self, read: Any) -> None:
        self.seen.append((self.namespace, await read(self.namespace, "tok", "token")))
        self.seen.append((self.namespace, await read(self.namespace, "gone", "token")))


class Worker:
    def __init__(self, namespace: str, seen: list[tuple[str, str | None]]) -> None:
        self.key = f"{namespace}/p"
        self.volumes = Volumes(namespace, seen)


async def test_a_round_lists_each_namespace_once() -> None:
    kubelet = SimKubelet(client.ApiClient(), [NodeSpec("n0", 1, 80 << 30)], 1.0)
    core = Core()
    kubelet._core = core  # type: ignore[assignment]
    seen: list[tuple[str, str | None]] = []
    for i, ns in enumerate(["a", "a", "b", "a"]):
        kubelet.workers[str(i)] = Worker(ns, seen)  # type: ignore[assignment]
    assert await kubelet.sync_secrets() == 4
    assert sorted(core.lists) == ["a", "b"] and core.gets == 0
    assert ("a", "token-of-a") in seen and ("b", "token-of-b") in seen
    assert ("a", None) in seen  # a Secret absent from the listing reads as absent
