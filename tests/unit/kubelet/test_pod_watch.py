"""The sim-kubelet watches each of its nodes' pods with that node's field selector, as kubelet
does (`spec.nodeName=NODE`), never every pod of the cluster: with K sim-kubelet processes a watch
of every pod had each of them decode the whole fleet's pod events."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from kubernetes_asyncio import client

from vllm_sleep.testing.kubelet.kubelet import SimKubelet
from vllm_sleep.testing.kubelet.nodes import NodeSpec


def pod(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"nodeName": node},
    }


class Content:
    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    async def iter_any(self) -> Any:
        for line in self._lines:
            yield line


class Answer:
    def __init__(self, body: Any = None, events: list[dict[str, Any]] | None = None) -> None:
        self.status = 200
        self._body = body
        self.content = Content([json.dumps(e).encode() + b"\n" for e in events or []])

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        pass

    async def json(self) -> Any:
        return self._body


class Core:
    """Pods of two nodes; a watch brings one new pod to the node it selects."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods = pods
        self.calls: list[tuple[bool, str | None]] = []  # (watch, field selector)

    async def list_pod_for_all_namespaces(self, **kw: Any) -> Answer:
        selector = kw.get("field_selector")
        self.calls.append((bool(kw.get("watch")), selector))
        node = (selector or "").removeprefix("spec.nodeName=")
        mine = [p for p in self.pods if p["spec"]["nodeName"] == node or selector is None]
        if kw.get("watch"):
            return Answer(events=[{"type": "ADDED", "object": pod(f"new-{node}", node)}])
        return Answer({"metadata": {"resourceVersion": "7"}, "items": mine})


class Worker:
    def __init__(self, p: dict[str, Any]) -> None:
        self.pod = p


async def test_each_node_is_listed_and_watched_with_its_own_selector() -> None:
    kubelet = SimKubelet(
        client.ApiClient(), [NodeSpec("n0", 1, 80 << 30), NodeSpec("n1", 1, 80 << 30)], 1.0
    )
    core = Core([pod("a", "n0"), pod("b", "n1"), pod("c", "elsewhere")])
    kubelet._core = core  # type: ignore[assignment]
    seen: list[str] = []
    forgotten: list[str] = []

    async def on_pod(p: dict[str, Any]) -> None:
        seen.append(p["metadata"]["name"])

    async def forget(uid: str) -> None:
        forgotten.append(uid)

    kubelet._on_pod = on_pod  # type: ignore[method-assign]
    kubelet._forget = forget  # type: ignore[method-assign]
    # A pod of n0 that is gone from the listing, and one of n1 that is not n0's to forget.
    kubelet.workers["uid-gone"] = Worker(pod("gone", "n0"))  # type: ignore[assignment]
    kubelet.workers["uid-b"] = Worker(pod("b", "n1"))  # type: ignore[assignment]

    await asyncio.gather(kubelet._watch("n0"), kubelet._watch("n1"))

    assert sorted(core.calls) == [
        (False, "spec.nodeName=n0"),
        (False, "spec.nodeName=n1"),
        (True, "spec.nodeName=n0"),
        (True, "spec.nodeName=n1"),
    ]
    assert sorted(seen) == ["a", "b", "new-n0", "new-n1"]  # never another node's pod
    assert forgotten == ["uid-gone"]
