"""The kopf adapters: event handlers run on the loop, and kopf's diff-base is built lean."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import kopf

from vllm_sleep.controller.context import Context, Settings
from vllm_sleep.controller.handlers import LeanDiffBase, register
from vllm_sleep.controller.runners import ModelRunners
from vllm_sleep.metrics import OperatorMetrics


def test_event_handlers_are_coroutines() -> None:
    # A plain function would run in kopf's thread pool: a thread hop per event, and the
    # controllers' asyncio Events set from outside their loop.
    _ctx, _changed, registry, _runners = registered()
    handlers = registry._watching.get_all_handlers()
    assert len(handlers) == 4
    assert all(inspect.iscoroutinefunction(h.fn) for h in handlers)


POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "m-0",
        "namespace": "ns",
        "uid": "u",
        "resourceVersion": "7",
        "labels": {"vllm-sleep.io/model": "m"},
        "annotations": {
            "vllm-sleep.io/device": "n/gpu-0",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        },
        "ownerReferences": [{"kind": "ModelDeployment", "name": "m", "uid": "x"}],
        "managedFields": [{"manager": "sim-kubelet", "fieldsV1": {"f:status": {}}}] * 50,
    },
    "spec": {"containers": [{"name": "vllm", "image": "i", "args": ["--port", "8000"]}]},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}] * 5},
}


def test_lean_diff_base_builds_kopfs_essence_and_leaves_the_body_alone() -> None:
    body = kopf.Body({**copy.deepcopy(POD), "kind": "ModelDeployment"})
    stock = kopf.AnnotationsDiffBaseStorage(prefix="vllm-sleep.io").build(body=body)
    lean = LeanDiffBase(prefix="vllm-sleep.io").build(body=body)
    assert lean == stock
    assert "status" not in lean and "managedFields" not in lean.get("metadata", {})
    assert dict(body) == {**POD, "kind": "ModelDeployment"}


def test_objects_watched_by_event_handlers_only_get_an_empty_essence() -> None:
    lean = LeanDiffBase(prefix="vllm-sleep.io")
    assert lean.build(body=kopf.Body(copy.deepcopy(POD))) == {}
    model = {**POD, "apiVersion": "vllm-sleep.io/v1alpha1", "kind": "ModelDeployment"}
    assert lean.build(body=kopf.Body(model))["spec"] == POD["spec"]


class Kicked:
    def __init__(self) -> None:
        import asyncio

        self.kick = asyncio.Event()


def md(generation: int, status: str, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "namespace": "ns",
            "name": "m",
            "uid": "u",
            "generation": generation,
            "annotations": annotations or {},
        },
        "spec": {"model": "x"},
        "status": {"phase": status},
    }


def model_changed_handler() -> tuple[Context, Any]:
    """A Context whose status writes go nowhere, and its registered `model_changed` handler."""
    ctx, changed, _registry, _runners = registered()
    return ctx, changed


def registered() -> tuple[Context, Any, kopf.OperatorRegistry, ModelRunners]:
    """The operator's handlers registered on a Context whose status writes go nowhere, and
    the `model_changed` handler among them."""
    from types import SimpleNamespace

    from vllm_sleep.controller.children import Children
    from vllm_sleep.controller.coalesce import Coalescer

    async def write(key: Any, value: Any) -> None:
        pass

    ctx = Context(
        settings=Settings(agent_image="img"),
        kube=SimpleNamespace(model_status=Coalescer(write, window=0)),  # type: ignore[arg-type]
        agents=None,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        children=Children(None),  # type: ignore[arg-type]
        parse=lambda body: None,  # type: ignore[arg-type,return-value]
    )
    registry = kopf.OperatorRegistry()
    runners = register(registry, ctx)
    changed = next(
        h.fn for h in registry._watching.get_all_handlers() if h.fn.__name__ == "model_changed"
    )
    return ctx, changed, registry, runners


async def test_the_echo_of_a_status_write_does_not_kick_a_pass_a_spec_change_does() -> None:
    ctx, changed = model_changed_handler()
    ctl = Kicked()
    ctx.controllers[("ns", "m")] = ctl  # type: ignore[assignment]

    async def event(kind: str, body: dict[str, Any]) -> bool:
        ctl.kick.clear()
        event = {"type": kind, "object": body}
        await changed(name="m", namespace="ns", type=kind, body=kopf.Body(body), event=event)  # type: ignore[arg-type]
        return ctl.kick.is_set()

    assert await event("ADDED", md(1, "Pending"))
    assert not await event("MODIFIED", md(1, "Starting"))  # only the status moved: our write
    assert not await event("MODIFIED", md(1, "Asleep"))
    assert await event("MODIFIED", md(2, "Asleep"))  # a spec change
    assert await event("MODIFIED", md(2, "Asleep", {"a": "b"}))  # an annotation
    assert not await event("MODIFIED", md(2, "Awake", {"a": "b"}))
    assert await event("DELETED", md(2, "Awake", {"a": "b"}))
    assert await event("ADDED", md(1, "Pending"))  # the same name again: a new model


async def test_the_kept_body_of_a_model_loses_its_managed_fields() -> None:
    _ctx, changed = model_changed_handler()
    raw = md(1, "Pending")
    raw["metadata"]["managedFields"] = [{"manager": "kopf", "fieldsV1": {"f:status": {}}}]
    event = {"type": "ADDED", "object": raw}
    await changed(name="m", namespace="ns", type="ADDED", body=kopf.Body(raw), event=event)  # type: ignore[arg-type]
    assert "managedFields" not in raw["metadata"]
    assert raw["metadata"]["generation"] == 1 and raw["status"] == {"phase": "Pending"}


def test_kopf_posts_events_with_a_few_workers() -> None:
    from vllm_sleep.controller.handlers import EVENT_POSTER_IDLE_SECONDS, EVENT_POSTERS

    _ctx, _changed, registry, _runners = registered()
    settings = kopf.OperatorSettings()
    assert settings.posting.worker_limit is None  # kopf's default: unbounded
    (configure,) = [
        h.fn for h in registry._activities.get_all_handlers() if h.fn.__name__ == "configure"
    ]
    configure(settings=settings)
    assert settings.posting.worker_limit == EVENT_POSTERS
    assert settings.posting.idle_timeout == EVENT_POSTER_IDLE_SECONDS < 1.0  # kopf's: 1 s


def test_events_say_they_come_from_this_operator_and_its_pod(
    monkeypatch: Any,
) -> None:
    monkeypatch.setenv("POD_NAME", "vllm-sleep-operator-7d9f-abcde")
    _ctx, _changed, registry, _runners = registered()
    settings = kopf.OperatorSettings()
    (configure,) = [
        h.fn for h in registry._activities.get_all_handlers() if h.fn.__name__ == "configure"
    ]
    configure(settings=settings)
    posting = settings.posting
    assert posting.reporting_component == "vllm-sleep-operator"  # was kopf's "kopf"
    assert posting.reporting_instance == "vllm-sleep-operator-7d9f-abcde"  # was "dev"
    assert posting.event_name_prefix == "vllm-sleep-operator-"
