"""KubernetesSource's informer over a fake API: error answers, 410, relist, watch events.

The generated client hands back error answers unraised when the content is not preloaded; the
informer must treat them as errors (relist with backoff), never as an empty watch to resume.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL
from vllm_sleep.gateway import MemoryDemand
from vllm_sleep.gateway.kube_source import KubernetesSource, _Gone
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.gateway.router import Router
from vllm_sleep.gateway.routing import ModelKey, ModelSpec, PodState


class FakeContent:
    def __init__(self, lines: Sequence[bytes]) -> None:
        self._lines = list(lines)

    async def readline(self) -> bytes:
        return self._lines.pop(0) if self._lines else b""


class FakeResponse:
    def __init__(self, status: int, body: Any = None, lines: Sequence[Any] = ()) -> None:
        self.status = status
        self._body = json.dumps(body).encode()
        self.content = FakeContent([json.dumps(x).encode() + b"\n" for x in lines])
        self.released = False

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        self.released = True


class Sink:
    def __init__(self) -> None:
        self.pods: dict[tuple[str, str], PodState] = {}
        self.models: dict[ModelKey, ModelSpec] = {}

    def upsert_model(self, spec: ModelSpec) -> None:
        self.models[spec.key] = spec

    def remove_model(self, key: ModelKey) -> None:
        self.models.pop(key, None)

    def upsert_pod(self, pod: PodState) -> None:
        self.pods[pod.key] = pod

    def remove_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    def replace_models(self, specs: Sequence[ModelSpec]) -> None:
        self.models = {s.key: s for s in specs}

    def replace_pods(self, pods: Sequence[PodState]) -> None:
        self.pods = {p.key: p for p in pods}


def pod(name: str, rv: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ns",
            "labels": {LABEL_MODEL: "m"},
            "resourceVersion": rv,
        },
        "status": {"podIP": "127.10.0.9", "phase": "Running"},
    }


def source() -> tuple[KubernetesSource, GatewayMetrics]:
    metrics = GatewayMetrics()
    return KubernetesSource(object(), metrics, port=8000), metrics


def restarts(metrics: GatewayMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "vllm_sleep_gateway_watch_restarts_total", {"resource": "pods"}
    )
    return value or 0.0


@pytest.mark.parametrize("status", [403, 429, 500])
async def test_an_error_answer_to_a_watch_raises_instead_of_resuming(status: int) -> None:
    src, _ = source()

    async def fn(**_: Any) -> FakeResponse:
        return FakeResponse(status, {"kind": "Status", "message": "no", "code": status})

    with pytest.raises(RuntimeError, match=f"HTTP {status}: no"):
        await src._watch(fn, {}, "pods", "5")


async def test_a_410_answer_to_a_watch_relists() -> None:
    src, _ = source()

    async def fn(**_: Any) -> FakeResponse:
        return FakeResponse(410, {"kind": "Status", "code": 410})

    with pytest.raises(_Gone):
        await src._watch(fn, {}, "pods", "5")


async def test_informer_backs_off_on_a_forbidden_list_then_lists_and_follows_the_watch() -> None:
    src, metrics = source()
    sink = Sink()
    src._sink = sink
    answers = [
        FakeResponse(403, {"kind": "Status", "message": "forbidden", "code": 403}),
        FakeResponse(200, {"metadata": {"resourceVersion": "1"}, "items": [pod("a", "1")]}),
        FakeResponse(
            200,
            lines=[
                {"type": "ADDED", "object": pod("b", "2")},
                {"type": "DELETED", "object": pod("a", "3")},
                {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "4"}}},
            ],
        ),
    ]
    seen: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def fn(**kw: Any) -> FakeResponse:
        seen.append(kw)
        if not answers:
            done.set()
            await asyncio.Event().wait()  # the next watch stays open
        return answers.pop(0)

    src._list_fn = lambda kind, ns: (fn, {})  # type: ignore[method-assign]
    synced = asyncio.Event()
    task = asyncio.create_task(src._informer("pods", None, synced))
    await asyncio.wait_for(done.wait(), 10)
    task.cancel()
    assert synced.is_set()
    assert restarts(metrics) == 1  # the forbidden list, retried after a backoff
    assert set(sink.pods) == {("ns", "b")}
    assert seen[-1]["resource_version"] == "4"  # resumed from the bookmark


def labelled(name: str, model: str | None) -> dict[str, Any]:
    """An awake, ready model pod; `model=None` has the model label removed."""
    obj = pod(name, "7")
    obj["metadata"]["labels"] = {} if model is None else {LABEL_MODEL: model}
    obj["status"]["conditions"] = [
        {"type": "ContainersReady", "status": "True"},
        {"type": CONDITION_AWAKE, "status": "True"},
    ]
    return obj


@pytest.mark.parametrize("event", ["MODIFIED", "DELETED"])
def test_a_pod_whose_model_label_is_removed_leaves_the_routing_table(event: str) -> None:
    # `kubectl label pod x vllm-sleep.io/model-` takes a pod out of the selector: the watch
    # sends the pod as it is now, without the label (DELETED for a selector watch, MODIFIED
    # if anything ever sends it so), and the pod must stop being routable at once.
    src, _ = source()
    router = Router(MemoryDemand(), GatewayMetrics(), demand_interval=10.0)
    src._sink = router
    src._apply("pods", "ADDED", labelled("a", "m"))
    assert [r.pod for r in router.table.awake_replicas(ModelKey("ns", "m"))] == [("ns", "a")]
    src._apply("pods", event, labelled("a", None))
    assert router.table.awake_replicas(ModelKey("ns", "m")) == ()


def test_a_pod_relabelled_to_another_model_serves_only_that_model() -> None:
    src, _ = source()
    router = Router(MemoryDemand(), GatewayMetrics(), demand_interval=10.0)
    src._sink = router
    src._apply("pods", "ADDED", labelled("a", "m"))
    src._apply("pods", "MODIFIED", labelled("a", "n"))
    assert router.table.awake_replicas(ModelKey("ns", "m")) == ()
    assert [r.pod for r in router.table.awake_replicas(ModelKey("ns", "n"))] == [("ns", "a")]


def mdep(name: str, max_queued: object = 8) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "3"},
        "spec": {
            "model": "org/m",
            "image": "vllm/vllm-openai:v0.11.0",
            "resources": {"gpuMemoryUtilization": 0.5, "weightsSize": "1Gi"},
            "wake": {"maxQueued": max_queued},
        },
    }


def test_a_model_deployment_that_does_not_validate_is_skipped_on_a_list() -> None:
    src, _ = source()
    sink = Sink()
    src._sink = sink
    src._replace("modeldeployments", None, [mdep("good"), mdep("bad", max_queued="lots")])
    assert set(sink.models) == {ModelKey("ns", "good")}
    assert sink.models[ModelKey("ns", "good")].wake.max_queued == 8


def test_an_invalid_update_keeps_the_last_valid_spec_and_a_delete_removes_it() -> None:
    src, _ = source()
    sink = Sink()
    src._sink = sink
    src._apply("modeldeployments", "ADDED", mdep("m"))
    src._apply("modeldeployments", "MODIFIED", mdep("m", max_queued=-1))  # no exception
    assert sink.models[ModelKey("ns", "m")].wake.max_queued == 8
    src._apply("modeldeployments", "DELETED", mdep("m", max_queued=-1))
    assert sink.models == {}
