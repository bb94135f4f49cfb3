"""The few Kubernetes writes the operator makes, in one place (and so one RBAC story)."""

from __future__ import annotations

import base64
import os
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ..api.model_status import STATUS_WRITE_WINDOW_SECONDS
from ..api.names import (
    CONDITION_AWAKE,
    GPU_POOL_PLURAL,
    GROUP,
    LABEL_MODEL,
    MODEL_DEPLOYMENT_PLURAL,
    VERSION,
)
from ..reconcile.status import awaits_its_pods, rfc3339
from . import coalesce
from .lanes import Lane, PriorityGate
from .podcache import slim

T = TypeVar("T")

# Connections to the apiserver the operator's own client keeps (kopf's watches have their own).
# Each TLS connection holds a 256 KiB read buffer plus its SSL state: the client's default of
# 100, filled during a big fleet's bring-up, was tens of MB of the operator's memory. Requests
# beyond this wait for a connection, the most urgent first (`lanes.py`).
API_CONNECTIONS = 32
# The leader Lease's own client: its renewals never wait behind a fleet's creates (a renewal
# queued past the renew deadline would make the leader step down in the middle of a bring-up).
LEADER_CONNECTIONS = 1
# The lane of a child's create (`lanes.Lane`); pods and ResourceClaims are `PODS`.
CREATE_LANES = {"Service": Lane.BACKGROUND, "Secret": Lane.START, "Lease": Lane.START}
# Pods per page of a pod LIST (`Kube.list_pods`): what is decoded at once.
LIST_PAGE = 100


def api_client(connections: int = API_CONNECTIONS) -> client.ApiClient:
    """The operator's Kubernetes client (after the kubeconfig or in-cluster config is loaded)."""
    configuration = client.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = connections
    return lean_client(client.ApiClient(configuration))


def lean_client(api: client.ApiClient) -> client.ApiClient:
    """The client, without per-request work that can find nothing.

    The generated client's session trusts the environment: for that, aiohttp looks up the
    proxy variables and reads ~/.netrc in a worker thread for every request (two thread hops, a
    file open and the GIL handed back and forth, per API request). With neither set there is
    nothing to find, and a process's environment does not change. And it keeps a cookie jar,
    filtered for every request (~0.1 ms each in a profiled bring-up): the apiserver sets no
    cookies, and client-go keeps none either."""
    if not proxy_or_netrc_set():
        api.rest_client.pool_manager._trust_env = False
    api.rest_client.pool_manager._cookie_jar = aiohttp.DummyCookieJar()
    return api


def proxy_or_netrc_set() -> bool:
    """Whether a session that trusts the environment would find a proxy or a netrc file."""
    if urllib.request.getproxies():
        return True
    netrc = os.environ.get("NETRC")
    try:
        return Path(netrc).is_file() if netrc else (Path.home() / ".netrc").is_file()
    except RuntimeError:  # no home directory to look in
        return False


class Kube:
    def __init__(
        self,
        api: client.ApiClient,
        status_window: float = STATUS_WRITE_WINDOW_SECONDS,
        list_page: int = LIST_PAGE,
        connections: int = API_CONNECTIONS,
    ) -> None:
        self.api = api
        self.list_page = list_page
        # Every request of this client passes the gate, so no more are in flight than it has
        # connections, and a freed one goes to the most urgent waiting request.
        self.gate = PriorityGate(connections)
        self.core = client.CoreV1Api(api)
        self.coord = client.CoordinationV1Api(api)
        self.objects = client.CustomObjectsApi(api)
        # A model's status changes several times a second while it starts: at most one write per
        # model per window, the latest (`controller/coalesce.py`).
        self.model_status: coalesce.Coalescer[tuple[str, str], dict[str, Any]] = coalesce.Coalescer(
            self._write_model_status,
            status_window,
            defer_first=awaits_its_pods,
            slot=lambda: self.gate.slot(Lane.NORMAL),
        )

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        """Create a child object; True if created, False if it already existed. Pods (and
        claims) go first, a Service after every other request (`lanes.Lane`)."""
        kind = manifest["kind"]
        ns = manifest["metadata"]["namespace"]
        creators: dict[str, Callable[..., Awaitable[Any]]] = {
            "Pod": self.core.create_namespaced_pod,
            "Service": self.core.create_namespaced_service,
            "Secret": self.core.create_namespaced_secret,
            "Lease": self.coord.create_namespaced_lease,
            "ResourceClaim": self._create_claim,
        }
        create = creators[kind]
        try:
            # The answer as JSON, not as a generated model (a V1Pod built per created pod).
            lane = CREATE_LANES.get(kind, Lane.PODS)
            await self._json(create(ns, manifest, _preload_content=False), lane, read=False)
        except ApiException as e:
            if e.status == 409:
                return False
            if e.status == 403 and "being terminated" in f"{e.body!s} {e.reason}":
                return False  # the namespace is going away, and the model with it
            raise
        return True

    def _create_claim(self, namespace: str, manifest: dict[str, Any], **kw: Any) -> Any:
        return self.objects.create_namespaced_custom_object(
            "resource.k8s.io", "v1", namespace, "resourceclaims", manifest, **kw
        )

    async def list_claims(self, label_selector: str) -> list[dict[str, Any]]:
        """ResourceClaims with these labels, in every namespace."""
        data: dict[str, Any] = await self._call(
            self.objects.list_cluster_custom_object(
                "resource.k8s.io", "v1", "resourceclaims", label_selector=label_selector
            )
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def delete_claim(self, namespace: str, name: str) -> None:
        try:
            await self._call(
                self.objects.delete_namespaced_custom_object(
                    "resource.k8s.io", "v1", namespace, "resourceclaims", name
                ),
                Lane.PODS,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def list_model_pods(self) -> list[dict[str, Any]]:
        """Every model pod the operator may see (all namespaces), whole, read in pages."""
        return await self._pages(
            self.core.list_pod_for_all_namespaces, _whole, label_selector=LABEL_MODEL
        )

    async def list_nodes(self) -> list[dict[str, Any]]:
        data = await self._json(self.core.list_node(_preload_content=False))
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def get_node(self, name: str) -> dict[str, Any] | None:
        """The Node as JSON; None when it does not exist."""
        node: dict[str, Any] | None = await unless_absent(
            self._json(self.core.read_node(name, _preload_content=False))
        )
        return node

    async def list_resource_slices(self) -> list[dict[str, Any]]:
        data: dict[str, Any] = await self._call(
            self.objects.list_cluster_custom_object("resource.k8s.io", "v1", "resourceslices")
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        patch: Any = self.objects.patch_cluster_custom_object_status
        await self._json(
            patch(
                GROUP,
                VERSION,
                GPU_POOL_PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            ),
            read=False,
        )

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        secret = await unless_absent(
            self._call(self.core.read_namespaced_secret(name, namespace), Lane.START)
        )
        if secret is None:
            return None
        raw = (secret.data or {}).get(key)
        return base64.b64decode(raw).decode() if raw else None

    async def list_pods(
        self,
        namespace: str,
        selector: str,
        keep: Callable[[dict[str, Any]], dict[str, Any]] = slim,
    ) -> list[dict[str, Any]]:
        """The pods, `keep` of each (default: what a reconcile pass reads), read in pages.

        Each page's whole pods (managedFields, spec, every status) are decoded, cut to what is
        kept and let go before the next page is read: decoded all at once, a thousand whole pods
        were ~100 MB of short-lived objects, and the kept parts scattered among them held much of
        that heap for good."""
        return await self._pages(
            self.core.list_namespaced_pod, keep, namespace, label_selector=selector
        )

    async def _pages(
        self,
        list_call: Callable[..., Awaitable[Any]],
        keep: Callable[[dict[str, Any]], dict[str, Any]],
        *args: Any,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """A LIST read `list_page` objects at a time, `keep` of each. The apiserver serves
        every page from the snapshot of the first, so the pages add up to one consistent list."""
        items: list[dict[str, Any]] = []
        more: dict[str, Any] = {}
        while True:
            page = await self._json(
                list_call(*args, limit=self.list_page, _preload_content=False, **kwargs, **more)
            )
            items.extend(keep(p) for p in page.get("items", []))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items
            more = {"_continue": token}

    async def delete_pod(
        self, namespace: str, name: str, uid: str | None = None, *, force: bool = False
    ) -> None:
        """`force`: grace 0, the object goes at once (its node is lost: no kubelet will)."""
        body = client.V1DeleteOptions(
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
            grace_period_seconds=0 if force else None,
        )
        try:
            await self._call(self.core.delete_namespaced_pod(name, namespace, body=body), Lane.PODS)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    async def set_routed(self, namespace: str, pod: str, routed: bool, reason: str) -> None:
        """Flip the pod's readiness gate; Ready (and so every router) follows it."""
        cond = {
            "type": CONDITION_AWAKE,
            "status": "True" if routed else "False",
            "reason": reason,
            "lastTransitionTime": rfc3339(time.time()),
        }
        await self._json(
            self.core.patch_namespaced_pod_status(
                pod, namespace, {"status": {"conditions": [cond]}}, _preload_content=False
            ),
            read=False,
        )

    async def model_uid(self, namespace: str, name: str) -> str | None:
        """The uid of the ModelDeployment under that name now; None when there is none."""
        body = await unless_absent(
            self._json(
                self.objects.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, MODEL_DEPLOYMENT_PLURAL, name, _preload_content=False
                )
            )
        )
        uid = ((body or {}).get("metadata") or {}).get("uid")
        return str(uid) if uid else None

    async def annotate_pod(
        self, namespace: str, pod: str, annotations: dict[str, str | None]
    ) -> None:
        try:
            await self._json(
                self.core.patch_namespaced_pod(
                    pod,
                    namespace,
                    {"metadata": {"annotations": annotations}},
                    _preload_content=False,
                ),
                read=False,
            )
        except ApiException as e:
            if e.status != 404:
                raise

    async def patch_model_status(
        self, namespace: str, name: str, status: dict[str, Any], *, superseded: bool = False
    ) -> None:
        """Written at once by its own task (the caller does not wait for it), or (another
        write of this model's status went out less than the window ago, or the status is
        `superseded` already by a transition its pass started) coalesced with any that follow
        and written when the window ends."""
        await self.model_status.submit((namespace, name), status, held=superseded)

    async def _write_model_status(self, key: tuple[str, str], status: dict[str, Any]) -> None:
        """Sent in the coalescer's slot (its turn at the gate), so not through it again."""
        namespace, name = key
        # The generated client would send a dict as a JSON patch; status wants a merge patch.
        patch: Any = self.objects.patch_namespaced_custom_object_status
        await json_answer(
            patch(
                GROUP,
                VERSION,
                namespace,
                MODEL_DEPLOYMENT_PLURAL,
                name,
                {"status": status},
                _content_type="application/merge-patch+json",
                _preload_content=False,
            ),
            read=False,
        )

    async def get_cluster_object(
        self, group: str, version: str, plural: str, name: str
    ) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = await unless_absent(
            self._call(self.objects.get_cluster_custom_object(group, version, plural, name))
        )
        return obj

    async def read_lease_renew_time(self, namespace: str, name: str) -> float | None:
        lease = await unless_absent(
            self._call(self.coord.read_namespaced_lease(name, namespace), Lane.START)
        )
        if lease is None:
            return None
        renew = lease.spec.renew_time if lease.spec else None
        return renew.timestamp() if renew else None

    async def _call(self, call: Awaitable[T], lane: Lane = Lane.NORMAL) -> T:
        """The request, once the gate gives it a connection."""
        try:
            async with self.gate.slot(lane):
                return await call
        finally:
            _close(call)  # never started if the wait was cancelled: no "never awaited" warning

    async def _json(
        self, call: Awaitable[Any], lane: Lane = Lane.NORMAL, *, read: bool = True
    ) -> Any:
        """`json_answer` of the request, once the gate gives it a connection (None without
        `read`: the answer is not decoded)."""
        try:
            async with self.gate.slot(lane):
                return await json_answer(call, read=read)
        finally:
            _close(call)


def _close(call: Awaitable[Any]) -> None:
    close = getattr(call, "close", None)
    if close is not None:
        close()  # a no-op on a coroutine that ran


def _whole(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


async def json_answer(call: Awaitable[Any], *, read: bool = True) -> Any:
    """The answer's JSON, read without the generated client's models (building them, dates
    parsed by dateutil, costs more CPU than the request itself). Without preloading the client
    raises nothing, so a non-2xx answer raises `ApiException` here, as a preloaded call would.
    Without `read`, None: a write's answer is the whole object written (a pod, ~11 KiB of
    JSON with its managedFields), which the callers that only need success never look at."""
    resp = await call
    async with resp:  # released on the way out, read or not
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=await resp.text())
        if not read:
            await resp.read()  # the connection is kept for the next request once it is read
            return None
        return await resp.json()


async def unless_absent(call: Awaitable[T]) -> T | None:
    """The object, or None when the apiserver says it does not exist (404); other errors raise."""
    try:
        return await call
    except ApiException as e:
        if e.status == 404:
            return None
        raise
