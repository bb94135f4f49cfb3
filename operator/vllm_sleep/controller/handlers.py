"""kopf handlers: short adapters from Kubernetes events to the per-model controllers.

Nothing here decides anything. A loop per ModelDeployment runs its ModelController (`runners`,
started and stopped by the object's own events); events on the objects it depends on (its pods,
its demand Lease, its own spec) just kick that controller.
The event handlers are coroutines: kopf runs a plain function in a thread pool, which costs a
thread hop per event and would set the controllers' asyncio Events from outside their loop.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import kopf

from ..api.demand import renew_time
from ..api.names import (
    COMPONENT_DEMAND_LEASE,
    GPU_POOL_PLURAL,
    GROUP,
    LABEL_COMPONENT,
    LABEL_MODEL,
    MODEL_DEPLOYMENT_PLURAL,
    VERSION,
)
from .context import Context
from .leader import COMPONENT
from .model import Body, ModelController
from .runners import ModelRunners

log = logging.getLogger(__name__)

DEMAND_COMPONENT = COMPONENT_DEMAND_LEASE
EVENT_POSTERS = 16
EVENT_POSTER_IDLE_SECONDS = 0.05
EVENT_ONLY_KINDS = frozenset({"Pod", "Lease"})  # watched by on.event handlers only


def register(registry: kopf.OperatorRegistry, ctx: Context) -> ModelRunners:
    """Register the handlers; the model loops they start, for the caller to close when the
    operator stops acting."""

    @kopf.on.login(registry=registry)
    async def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # Through kubernetes_asyncio, the client the operator itself uses (in-cluster, else the
        # kubeconfig, exec plugins included): the sync client is not loaded in this process.
        return await kopf.login_via_async_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Progress in annotations, not status: status belongs to the model's own schema, and the
        # operator never writes spec (GitOps tools own it).
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = LeanDiffBase(prefix=GROUP)
        settings.posting.level = logging.INFO
        # kopf posts Events with a worker per object, as many at once as objects have Events
        # queued: a fleet's pre-warm "Slept" Events came by the hundred, each on its own
        # connection with a TLS read buffer (memory the process kept). A bounded few drain the
        # queue as fast when each leaves as soon as its object has nothing more to post (kopf
        # keeps one waiting a second for more, which would cap the posting at a few a second).
        settings.posting.worker_limit = EVENT_POSTERS
        settings.posting.idle_timeout = EVENT_POSTER_IDLE_SECONDS
        settings.watching.server_timeout = 270
        settings.peering.standalone = True
        # Events say who posted them (`kubectl describe`'s From, `kubectl get events
        # --field-selector reportingComponent=...`): this operator and its pod, not kopf's
        # defaults ("kopf", instance "dev", names "kopf-event-..."), as the leader election's do.
        settings.posting.reporting_component = COMPONENT
        settings.posting.reporting_instance = os.environ.get("POD_NAME") or socket.gethostname()
        settings.posting.event_name_prefix = f"{COMPONENT}-"

    async def run_model(
        namespace: str, name: str, get_body: Callable[[], Body], stopped: Callable[[], bool]
    ) -> None:
        def emit(kind: str, reason: str, message: str) -> None:
            body = kopf.Body(cast(kopf.RawBody, get_body()))
            kopf.event(body, type=kind, reason=reason, message=message)

        controller = ModelController(ctx, namespace, name, emit)
        ctx.controllers[(namespace, name)] = controller
        try:
            await controller.run(get_body, stopped)
        finally:
            if ctx.controllers.get((namespace, name)) is controller:
                del ctx.controllers[(namespace, name)]

    changes = ModelChanges()

    def ended(key: tuple[str, str]) -> None:
        """A model's loop has ended (its object was deleted): drop what is kept by its name."""
        namespace, name = key
        changes.forget(namespace, name)
        ctx.kube.model_status.forget(key)
        ctx.children.forget(namespace, name)
        forget = getattr(ctx.parse, "forget", None)  # the ParseMemo's kept model
        if forget is not None:
            forget(namespace, name)
        ctx.demand.pop(key, None)
        ctx.pods.forget(namespace, name)
        ctx.forget_model(namespace, name)  # no stale per-model metric series

    runners = ModelRunners(
        run_model,
        lambda key: _kick(ctx, *key),
        ended=ended,
        lookup=lambda key: ctx.kube.model_uid(*key),
    )

    @kopf.on.startup(registry=registry)
    def watch_for_gone_models(**_: Any) -> None:
        # A status write that finds no object: the model may be gone without its DELETED seen.
        ctx.kube.model_status.gone = runners.verify

    @kopf.on.cleanup(registry=registry)
    async def stop_models(**_: Any) -> None:
        await runners.close()

    @kopf.on.event(GROUP, VERSION, MODEL_DEPLOYMENT_PLURAL, registry=registry)
    async def model_changed(
        name: str,
        namespace: str | None,
        type: str,
        body: kopf.Body,
        event: Mapping[str, Any],
        **_: Any,
    ) -> None:
        raw = event.get("object")
        drop_managed_fields(raw)
        if changes.needs_pass(type, body):
            _kick(ctx, namespace, name)
        if isinstance(raw, dict):  # after the kick: a deletion's stop kicks the loop itself
            runners.observe(type, raw)
        for other_ns, other in ctx.names.observe(type, body):  # a name owner came or went
            _kick(ctx, other_ns, other)

    @kopf.on.event(GROUP, VERSION, GPU_POOL_PLURAL, registry=registry)
    async def pool_changed(name: str, type: str, event: Mapping[str, Any], **_: Any) -> None:
        raw = event.get("object")
        if type == "DELETED":
            ctx.children.pools.pop(name, None)
        elif isinstance(raw, dict):
            ctx.children.pools[name] = raw
        for controller in list(ctx.controllers.values()):  # placement may change for any model
            controller.kick.set()

    @kopf.on.event("", "v1", "pods", labels={LABEL_MODEL: kopf.PRESENT}, registry=registry)
    async def pod_changed(
        labels: Mapping[str, str], namespace: str | None, event: Mapping[str, Any], **_: Any
    ) -> None:
        raw = event.get("object")
        if isinstance(raw, dict):
            ctx.pods.observe(event.get("type"), raw, labels[LABEL_MODEL])
        _kick(ctx, namespace, labels[LABEL_MODEL])

    @kopf.on.event(
        "coordination.k8s.io",
        "v1",
        "leases",
        labels={LABEL_COMPONENT: DEMAND_COMPONENT, LABEL_MODEL: kopf.PRESENT},
        registry=registry,
    )
    async def demand(
        labels: Mapping[str, str], namespace: str | None, spec: kopf.Spec, **_: Any
    ) -> None:
        renew = renew_time(spec)
        if renew is not None and namespace:
            ctx.signal_demand(namespace, labels[LABEL_MODEL], renew)

    return runners


def drop_managed_fields(raw: Any) -> None:
    """Drop the object's managedFields, in place.

    The model's loop keeps its latest body (the very dict of the event, `runners`),
    and managedFields (a field tree per writer: spec, finalizers, status) was the largest part
    of it, which nothing here reads: tens of KB per model for the life of the model."""
    meta = raw.get("metadata") if isinstance(raw, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)


class ModelChanges:
    """Which ModelDeployment events are news to the model's control loop.

    Most events of a model are the echo of the operator's own status write: the pass that wrote
    it already acted on everything else in the body, and a pass for it (a kick) would compute
    the same plan again. Its spec (generation), labels, annotations and deletion are what a
    pass reads from the body beyond its own status, so a change of those kicks; an event that
    changed none of them does not (the loop's body is the latest event's: the next pass reads it
    as it is then)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[Any, ...]] = {}

    def needs_pass(self, event_type: str | None, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace") or "", meta.get("name") or "")
        mark = (
            meta.get("generation"),
            meta.get("deletionTimestamp"),
            tuple(sorted((meta.get("labels") or {}).items())),
            tuple(sorted((meta.get("annotations") or {}).items())),
        )
        if self._seen.get(key) == mark and event_type == "MODIFIED":
            return False
        self._seen[key] = mark
        return True

    def forget(self, namespace: str, name: str) -> None:
        self._seen.pop((namespace, name), None)


class LeanDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base, built without deep-copying what it drops (status, managedFields).

    kopf builds an "essence" (spec, labels, annotations) of every event of every watched object;
    its stock build deep-copies the whole body first, status and managedFields included, which
    was most of the operator's CPU per pod event at scale. Same essence, a fraction of the copy.
    Pods and Leases get an empty one: only on.event handlers watch them here, and kopf diffs
    essences for change handlers (on.create/update/field) alone.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None
    ) -> kopf.BodyEssence:
        if extra_fields:  # handlers watching status fields: the stock build keeps them
            return super().build(body=body, extra_fields=extra_fields)
        if body.get("kind") in EVENT_ONLY_KINDS:
            return kopf.BodyEssence()
        meta = body.get("metadata") or {}
        lean = {k: v for k, v in body.items() if k not in ("metadata", "status")}
        lean["metadata"] = {
            k: meta[k] for k in ("labels", "annotations", "ownerReferences") if k in meta
        }
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)))


def _kick(ctx: Context, namespace: str | None, name: str) -> None:
    controller = ctx.controllers.get((namespace or "", name))
    if controller is not None:
        controller.kick.set()
