"""KubernetesSource: ModelDeployments and model Pods from list+watch, never EndpointSlices.

One informer per (resource, namespace): list, then watch from the list's resourceVersion with
bookmarks; a watch that ends is resumed from the last version seen, a 410 Gone (or any error)
relists and replaces that namespace's state wholesale, so a missed DELETE cannot leave a stale
replica. Objects stay plain dicts (no model deserialisation on the watch path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from vllm_sleep.api.names import GROUP, LABEL_MODEL, MODEL_DEPLOYMENT_PLURAL, VERSION

from ..kubeconfig import NO_KUBECONFIG, check_kubeconfig, no_credentials
from .kube_parse import model_key, model_spec, pod_state
from .metrics import GatewayMetrics
from .routing import ModelSpec, PodState
from .sources import BackendSink

log = logging.getLogger(__name__)

WATCH_SECONDS = 240  # server-side watch timeout; the client timeout is a bit longer
BACKOFF_MAX = 10.0
ListFn = Callable[..., Awaitable[Any]]
Obj = dict[str, Any]


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


def _check_status(status: int, raw: bytes) -> None:
    """Raise for an error answer: 410 relists at once, anything else backs off.

    With `_preload_content=False` the generated client returns error answers (403 from RBAC,
    429 while the apiserver's storage initializes, 410) as if they succeeded; a watch answered
    with one would otherwise end at once and be resumed in a tight loop.
    """
    if status == 410:
        raise _Gone()
    if status != 200:
        try:
            message = json.loads(raw).get("message") or ""
        except (ValueError, AttributeError):
            message = raw[:200].decode(errors="replace")
        raise RuntimeError(f"HTTP {status}: {message}")


_HOW = "run it in a pod with its ServiceAccount, or pass --kubeconfig (or set KUBECONFIG)"


def check_credentials(kubeconfig: str | None) -> None:
    """Refuse what `kube_client` would refuse before reading anything: a bad or missing named
    kubeconfig, or none at all outside a pod. The supervisor checks once, so N workers do not
    each print it and crash-loop."""
    from kubernetes_asyncio.config import kube_config

    if kubeconfig:
        check_kubeconfig(kubeconfig)
    elif not os.environ.get("KUBERNETES_SERVICE_HOST") and not check_kubeconfig(
        kube_config.KUBE_CONFIG_DEFAULT_LOCATION
    ):
        raise no_credentials(NO_KUBECONFIG, _HOW)


async def kube_client(kubeconfig: str | None) -> Any:
    """An ApiClient from the kubeconfig, else in-cluster, else ~/.kube/config."""
    from kubernetes_asyncio import client, config

    try:
        if kubeconfig:
            check_kubeconfig(kubeconfig)
            await config.load_kube_config(config_file=kubeconfig)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                check_credentials(None)
                await config.load_kube_config()
    except config.ConfigException as e:  # neither in a pod nor given a kubeconfig
        raise no_credentials(e, _HOW) from e
    return client.ApiClient()


class KubernetesSource:
    def __init__(
        self,
        api_client: Any,
        metrics: GatewayMetrics,
        *,
        namespaces: Sequence[str] = (),
        port: int,
    ) -> None:
        from kubernetes_asyncio import client

        self._core = client.CoreV1Api(api_client)
        self._custom = client.CustomObjectsApi(api_client)
        self._metrics = metrics
        self._namespaces: Sequence[str | None] = list(namespaces) or [None]
        self._port = port
        self._pods: dict[tuple[str, str], PodState] = {}
        self._models: dict[tuple[str, str], ModelSpec] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._sink: BackendSink | None = None

    async def start(self, sink: BackendSink) -> None:
        self._sink = sink
        synced: list[asyncio.Event] = []
        for ns in self._namespaces:
            for kind in ("modeldeployments", "pods"):
                ev = asyncio.Event()
                synced.append(ev)
                task = asyncio.create_task(self._informer(kind, ns, ev), name=f"watch {kind} {ns}")
                self._tasks.append(task)
        await asyncio.gather(*(e.wait() for e in synced))

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        self._sink = None

    def _list_fn(self, kind: str, ns: str | None) -> tuple[ListFn, dict[str, Any]]:
        if kind == "pods":
            kw: dict[str, Any] = {"label_selector": LABEL_MODEL}
            if ns is None:
                return self._core.list_pod_for_all_namespaces, kw
            return self._core.list_namespaced_pod, {"namespace": ns, **kw}
        base: dict[str, Any] = {
            "group": GROUP,
            "version": VERSION,
            "plural": MODEL_DEPLOYMENT_PLURAL,
        }
        if ns is None:
            return self._custom.list_cluster_custom_object, base
        return self._custom.list_namespaced_custom_object, {"namespace": ns, **base}

    async def _informer(self, kind: str, ns: str | None, synced: asyncio.Event) -> None:
        fn, kw = self._list_fn(kind, ns)
        backoff = 0.5
        while True:
            try:
                resp = await fn(**kw, _preload_content=False)
                raw = await resp.read()
                _check_status(resp.status, raw)
                doc = json.loads(raw)
                rv = doc["metadata"]["resourceVersion"]
                self._replace(kind, ns, doc.get("items") or [])
                synced.set()
                backoff = 0.5
                while True:  # resume the watch from the last version seen until 410/error
                    rv = await self._watch(fn, kw, kind, rv)
            except asyncio.CancelledError:
                raise
            except _Gone:
                self._metrics.watch_restarts.labels(kind).inc()
                continue
            except Exception as e:
                self._metrics.watch_restarts.labels(kind).inc()
                log.warning(
                    "%s watch (%s) failed, relisting in %.1fs: %s", kind, ns or "all", backoff, e
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)

    async def _watch(self, fn: ListFn, kw: dict[str, Any], kind: str, rv: str) -> str:
        resp = await fn(
            **kw,
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=WATCH_SECONDS,
            _request_timeout=WATCH_SECONDS + 30,
            _preload_content=False,
        )
        try:
            if resp.status != 200:  # (the client raises only when it preloads the content)
                _check_status(resp.status, await resp.read())
            while line := await resp.content.readline():
                event = json.loads(line)
                obj = event.get("object") or {}
                kind_ = event.get("type")
                if kind_ == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                if kind_ in ("ADDED", "MODIFIED", "DELETED"):
                    self._apply(kind, kind_, obj)
        finally:
            resp.release()
        return rv

    def _replace(self, kind: str, ns: str | None, items: list[Obj]) -> None:
        sink = self._sink
        if kind == "pods":
            self._pods = {k: v for k, v in self._pods.items() if ns is not None and k[0] != ns}
            for item in items:
                pod = pod_state(item, self._port)
                if pod is not None:
                    self._pods[pod.key] = pod
            if sink is not None:
                sink.replace_pods(list(self._pods.values()))
            return
        self._models = {k: v for k, v in self._models.items() if ns is not None and k[0] != ns}
        for item in items:
            spec = model_spec(item)  # an object that does not validate is skipped (logged)
            if spec is not None:
                self._models[(spec.key.namespace, spec.key.name)] = spec
        if sink is not None:
            sink.replace_models(list(self._models.values()))

    def _apply(self, kind: str, event: str, obj: Obj) -> None:
        sink = self._sink
        if kind == "pods":
            pod = pod_state(obj, self._port)
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            known = self._pods.get(key)
            if event == "DELETED" or pod is None:
                # Keyed by the object's name, not by pod_state: a pod whose model label is
                # removed leaves the selector as it is now (unlabelled), and must stop being
                # routable at once, not at the next relist.
                if known is not None:
                    del self._pods[key]
                    if sink is not None:
                        sink.remove_pod(*key)
                return
            if known is not None and known.model != pod.model and sink is not None:
                sink.remove_pod(*key)  # relabelled: it no longer serves the old model
            self._pods[pod.key] = pod
            if sink is not None:
                sink.upsert_pod(pod)
            return
        if event == "DELETED":
            gone = model_key(obj)
            spec = None if gone is None else self._models.pop((gone.namespace, gone.name), None)
            if spec is not None and sink is not None:
                sink.remove_model(spec.key)
            return
        # One that does not validate (logged) keeps the last valid spec: it is routed as it
        # was, as the operator keeps running what it last read.
        spec = model_spec(obj)
        if spec is None:
            return
        self._models[(spec.key.namespace, spec.key.name)] = spec
        if sink is not None:
            sink.upsert_model(spec)
