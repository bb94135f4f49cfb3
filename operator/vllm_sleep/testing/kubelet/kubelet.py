"""The sim-kubelet: one process that is kubelet for every simulated GPU node.

Watches Pods bound to its nodes and runs a PodWorker for each; deletes a terminating pod once its
containers stopped (kubelet's final delete with grace 0); exposes an admin API on 127.0.0.1 for
tests and the demo: `/healthz`, `/pods`, `/violations` (contract violations of all engines).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ...api.names import ANNOTATION_DEVICE
from ..sim import EngineHost
from . import rawapi
from .hostmem import engine_owners, node_report, quantity_bytes
from .ips import IPPool, address_free
from .nodes import (
    EXCLUSIVE_WAIT_SECONDS,
    GPU_RESOURCE,
    GPU_SHARED_RESOURCE,
    NodeRegistrar,
    NodeSpec,
    choose_device,
    exclusive_free,
)
from .pods import FAST_PROBE_SECONDS, PodWorker

log = logging.getLogger(__name__)


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


SECRET_SYNC_SECONDS = 60.0  # kubelet's default --sync-frequency
IP_POOL_SIZE = 60000
PLEG_RELIST_SECONDS = 1.0  # how often kubelet looks at its containers' states


# Seconds of probing every second after a container turned ready (`pods.probe_delay`), when
# set; `off`: no fast probing at all, every probe at the pod's own period as kubelet does (the
# scale bench: a big fleet's probes were a sixth of this process's CPU).
FAST_PROBE_ENV = "VLLM_SLEEP_SIM_FAST_PROBE_SECONDS"
FAST_PROBE_OFF = "off"


def fast_probe_seconds(environ: Mapping[str, str]) -> float | None:
    value = environ.get(FAST_PROBE_ENV)
    if value == FAST_PROBE_OFF:
        return None
    return float(value) if value else FAST_PROBE_SECONDS


def status_batch(time_scale: float) -> float:
    """Seconds a pod worker gathers changes before writing the pod's status: kubelet's relist
    period, on the simulation's clock (tests run it 20x faster)."""
    return PLEG_RELIST_SECONDS * min(1.0, time_scale)


class SimKubelet:
    def __init__(
        self,
        api: client.ApiClient,
        nodes: list[NodeSpec],
        time_scale: float,
        ip_region: tuple[int, int] = (0, 1),
        pod_dir: Path | None = None,
    ) -> None:
        self._api = api
        self._pod_dir = pod_dir
        self._core = client.CoreV1Api(api)
        self._nodes = {n.name: n for n in nodes}
        self._registrar = NodeRegistrar(api, nodes)
        self.host = EngineHost(time_scale=time_scale)
        for n in nodes:  # pinned weight backups count against the node's memory
            self.host.host_memory(n.name, limit_bytes=quantity_bytes(n.memory))
        self._time_scale = time_scale
        # Other local clusters share 127/8: skip taken addresses, start somewhere random. The
        # sim-kubelets of one cluster (`--shard I/K`) each start in their own Kth of the range.
        region, regions = ip_region
        part = IP_POOL_SIZE // regions
        start = region * part + random.randrange(part)
        self._ips = IPPool(size=IP_POOL_SIZE, probe=address_free, start=start)
        self.workers: dict[str, PodWorker] = {}  # by pod uid
        self.past_workers: list[PodWorker] = []  # deleted pods, kept for their violation record
        self._worker_tasks: dict[str, asyncio.Task[None]] = {}
        self._deleting: set[str] = set()
        self._background: set[asyncio.Task[None]] = set()  # terminations in progress
        self._http: aiohttp.ClientSession | None = None
        self.ready = False  # nodes registered and the first pod list processed
        self._secret_task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        self._http = aiohttp.ClientSession()
        await self._registrar.register()
        self.ready = True
        self._secret_task = asyncio.create_task(self._secret_loop(), name="secret volumes")
        # kubelet watches only the pods bound to its own node (`fieldSelector=spec.nodeName=`):
        # one watch per node, as each real node's kubelet has. A watch of every pod made each
        # of K processes decode every pod event of the fleet (K times the work, and the
        # apiserver sent each event K times), most of them pods of other nodes or unbound yet.
        await asyncio.gather(*(self._follow(node) for node in self._nodes))

    async def _follow(self, node: str) -> None:
        while True:
            try:
                await self._watch(node)
            except (TimeoutError, ApiException, aiohttp.ClientError) as e:
                log.warning("pod watch of %s ended (%s); relisting", node, e)
                await asyncio.sleep(1)

    async def _watch(self, node: str) -> None:
        """List, then watch, the pods bound to `node`."""
        selector = f"spec.nodeName={node}"
        listing: Any = await self._core.list_pod_for_all_namespaces(
            field_selector=selector, _preload_content=False
        )
        data = await listing.json()
        seen = set()
        for pod in data.get("items", []):
            seen.add(pod["metadata"]["uid"])
            await self._on_pod(pod)
        for uid, worker in list(self.workers.items()):
            if worker.pod["spec"].get("nodeName") == node and uid not in seen:
                await self._forget(uid)  # deleted while we were not watching
        rv = data["metadata"]["resourceVersion"]
        # The events as JSON, not as the generated client's models: building a V1Pod per event
        # (dates parsed by dateutil) was the largest share of this process's CPU in a big
        # fleet's bring-up, and only the raw object is read.
        events = rawapi.watch_events(
            self._core.list_pod_for_all_namespaces(
                field_selector=selector,
                watch=True,
                resource_version=rv,
                timeout_seconds=300,
                allow_watch_bookmarks=True,
                _preload_content=False,
            )
        )
        async for event in events:
            pod = event.get("object") or {}
            if event["type"] == "ERROR":
                raise ApiException(status=pod.get("code", 500), reason=pod.get("message"))
            if event["type"] == "BOOKMARK":
                continue
            if event["type"] == "DELETED":
                await self._forget(pod["metadata"]["uid"])
            else:
                await self._on_pod(pod)

    async def _on_pod(self, pod: dict[str, Any]) -> None:
        node = pod.get("spec", {}).get("nodeName")
        if node not in self._nodes or node in self._registrar.lost:
            return  # not ours, or its kubelet is gone: nothing runs, stops or reports it
        uid = pod["metadata"]["uid"]
        if pod["metadata"].get("deletionTimestamp"):
            if uid not in self._deleting:
                self._deleting.add(uid)
                task = asyncio.create_task(self._terminate(pod))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            return
        if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
            return
        worker = self.workers.get(uid)
        if worker:
            worker.update(pod)
            return
        ip = self._ips.allocate(uid)
        assert self._http is not None
        worker = PodWorker(
            pod,
            ip,
            self.host,
            self._write_status,
            self._device_for,
            self._read_secret,
            self._http,
            now,
            restart_backoff=max(0.2, 2.0 * self._time_scale),
            status_batch=status_batch(self._time_scale),
            fast_probe_seconds=fast_probe_seconds(os.environ),
            pod_dir=self._pod_dir,
        )
        self.workers[uid] = worker
        self._worker_tasks[uid] = asyncio.create_task(worker.run(), name=f"pod {worker.key}")

    async def _terminate(self, pod: dict[str, Any]) -> None:
        md = pod["metadata"]
        await self._forget(md["uid"])
        with contextlib.suppress(ApiException):
            await self._core.delete_namespaced_pod(
                md["name"],
                md["namespace"],
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0, preconditions=client.V1Preconditions(uid=md["uid"])
                ),
            )
        self._deleting.discard(md["uid"])

    async def _forget(self, uid: str) -> None:
        worker = self.workers.pop(uid, None)
        task = self._worker_tasks.pop(uid, None)
        if task:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if worker:
            await worker.stop()
            self.past_workers = [*self.past_workers[-5000:], worker]
        self._ips.release(uid)

    async def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        md = pod["metadata"]
        write = self._core.patch_namespaced_pod_status(
            md["name"], md["namespace"], {"status": status}, _preload_content=False
        )
        await rawapi.send(write, absent_ok=True)  # a pod deleted meanwhile needs no status

    async def _secret_loop(self) -> None:
        """kubelet's periodic sync of Secret volumes (`--sync-frequency`, 1 min)."""
        while True:
            await asyncio.sleep(SECRET_SYNC_SECONDS)
            await self.sync_secrets()

    async def sync_secrets(self) -> int:
        """Rewrite every pod's Secret volumes whose Secret changed; how many pods were synced."""
        synced = 0
        # A namespace's Secrets are listed once a round, not read one by one: a thousand pods'
        # token volumes were a thousand GETs a minute (kubelet itself watches them).
        listed: dict[str, dict[str, dict[str, str]]] = {}  # namespace -> name -> data

        async def read(namespace: str, name: str, key: str) -> str | None:
            if namespace not in listed:
                listing = self._core.list_namespaced_secret(namespace, _preload_content=False)
                items = (await rawapi.read(listing)).get("items") or []
                listed[namespace] = {i["metadata"]["name"]: i.get("data") or {} for i in items}
            raw = listed[namespace].get(name, {}).get(key)
            return base64.b64decode(raw).decode() if raw is not None else None

        for w in list(self.workers.values()):
            try:
                await w.volumes.sync_secrets(read)
                synced += 1
            except (ApiException, OSError) as e:  # the next sync tries again
                log.warning("secret volumes of %s not synced: %s", w.key, e)
        return synced

    async def _read_secret(self, namespace: str, name: str, key: str) -> str | None:
        resp: Any = await self._core.read_namespaced_secret(name, namespace, _preload_content=False)
        async with resp:
            if resp.status == 404:
                return None
            if not 200 <= resp.status <= 299:
                raise ApiException(status=resp.status, reason=await resp.text())
            secret = await resp.json()
        raw = (secret.get("data") or {}).get(key)
        return base64.b64decode(raw).decode() if raw is not None else None

    async def _device_for(self, pod: dict[str, Any]) -> object | None:
        """The simulated GPU a pod's engine shares memory on: its DRA allocation, else a slot."""
        node = self._nodes[pod["spec"]["nodeName"]]
        for name in await self._claim_devices(pod):
            return self.host.device(f"{node.name}/{name}", total_bytes=node.gpu_memory_bytes)
        limits = {
            r
            for c in pod["spec"].get("containers") or []
            for r in (c.get("resources") or {}).get("limits") or {}
        }
        if not limits & {GPU_RESOURCE, GPU_SHARED_RESOURCE}:
            return None
        exclusive = GPU_RESOURCE in limits
        names = node.device_names()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXCLUSIVE_WAIT_SECONDS
        while True:
            pods_on = {d: 0 for d in names}
            taken: set[str] = set()
            for w in self.workers.values():
                if w.pod["spec"].get("nodeName") == node.name and w.device_name in pods_on:
                    pods_on[w.device_name] += 1
                    if w.exclusive:
                        taken.add(w.device_name)
            devices = {d: self.host.devices.get(f"{node.name}/{d}") for d in names}
            engines_on = {d: len(dev.holders) for d, dev in devices.items() if dev is not None}
            if not exclusive or exclusive_free(names, engines_on, frozenset(taken)):
                break
            if loop.time() >= deadline:
                break
            await asyncio.sleep(0.2)
        seat = ((pod["metadata"].get("annotations") or {}).get(ANNOTATION_DEVICE) or "").split("/")
        choice = choose_device(
            names,
            pods_on,
            engines_on,
            exclusive=exclusive,
            taken=frozenset(taken),
            seat=seat[1] if len(seat) == 2 and seat[0] == node.name else None,
        )
        worker = self.workers.get(pod["metadata"]["uid"])
        if worker:
            worker.device_name, worker.exclusive = choice, exclusive
        return self.host.device(f"{node.name}/{choice}", total_bytes=node.gpu_memory_bytes)

    async def _claim_devices(self, pod: dict[str, Any]) -> list[str]:
        ns = pod["metadata"]["namespace"]
        names = [c.get("resourceClaimName") for c in pod["spec"].get("resourceClaims") or []]
        names += [
            s.get("resourceClaimName")
            for s in pod.get("status", {}).get("resourceClaimStatuses") or []
        ]
        objs = client.CustomObjectsApi(self._api)
        out: list[str] = []
        for name in filter(None, names):
            with contextlib.suppress(ApiException):
                claim = await objs.get_namespaced_custom_object(
                    "resource.k8s.io", "v1", ns, "resourceclaims", name
                )
                results = (
                    ((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}
                ).get("results") or []
                out += [r["device"] for r in results]
        return out

    # --- admin API -------------------------------------------------------------------------

    def admin_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._admin_health)
        app.router.add_get("/pods", self._admin_pods)
        app.router.add_get("/violations", self._admin_violations)
        app.router.add_get("/nodes", self._admin_nodes)
        app.router.add_post("/pods/{namespace}/{name}/kill", self._admin_kill)
        app.router.add_post("/nodes/{name}/lose", self._admin_lose)
        app.router.add_post("/nodes/{name}/restore", self._admin_restore)
        app.router.add_post("/secrets/sync", self._admin_sync_secrets)
        return app

    async def _admin_sync_secrets(self, _req: web.Request) -> web.Response:
        """Sync Secret volumes now (a test need not wait for the periodic sync)."""
        return web.json_response({"pods": await self.sync_secrets()})

    async def _admin_restore(self, req: web.Request) -> web.Response:
        """A lost node's kubelet comes back (empty: its pods died with it); pods bound to it
        from now on run."""
        name = req.match_info["name"]
        if name not in self._nodes:
            return web.json_response({"error": f"no node {name} here"}, status=404)
        await self._registrar.restore(name)
        return web.json_response({"restored": name})

    async def _admin_kill(self, req: web.Request) -> web.Response:
        """`?container=NAME`: that container's process dies; the pod restarts it."""
        key = f"{req.match_info['namespace']}/{req.match_info['name']}"
        container = req.query.get("container", "")
        for worker in self.workers.values():
            if worker.key == key:
                if await worker.kill(container):
                    return web.json_response({"killed": container, "pod": key})
                return web.json_response({"error": f"{container!r} is not running"}, status=409)
        return web.json_response({"error": f"no pod {key} here"}, status=404)

    async def _admin_lose(self, req: web.Request) -> web.Response:
        """The node is lost: its kubelet stops (no heartbeat, no status), its containers die
        without their pods being told; `?unknown_for=S` dates its Unknown condition back."""
        name = req.match_info["name"]
        if name not in self._nodes:
            return web.json_response({"error": f"no node {name} here"}, status=404)
        try:
            unknown_for = float(req.query.get("unknown_for", "0"))
        except ValueError:
            return web.json_response({"error": "unknown_for must be seconds"}, status=400)
        # The node's status first: an observer that finds a pod's agent silent finds the node
        # already Unknown, as it would once the outage is older than the controller's grace.
        await self._registrar.lose(name, unknown_for)
        gone = [uid for uid, w in self.workers.items() if w.pod["spec"].get("nodeName") == name]
        for uid in gone:
            await self._forget(uid)
        return web.json_response({"lost": name, "pods": len(gone)})

    async def _admin_nodes(self, _req: web.Request) -> web.Response:
        """Host memory per node: capacity and the pinned weight backups, per pod."""
        owners = engine_owners([*self.past_workers, *self.workers.values()])
        out = []
        for name, spec in self._nodes.items():
            mem = self.host.host_memory(name)
            out.append(node_report(name, quantity_bytes(spec.memory), mem.pinned, owners))
        return web.json_response({"nodes": out})

    async def _admin_health(self, _req: web.Request) -> web.Response:
        return web.json_response({"ok": self.ready}, status=200 if self.ready else 503)

    async def _admin_pods(self, _req: web.Request) -> web.Response:
        out = []
        for w in self.workers.values():
            out.append(
                {
                    "pod": w.key,
                    "ip": w.pod_ip,
                    "node": w.pod["spec"].get("nodeName"),
                    "engines": {n: getattr(e, "state", None) for n, e in w.engines.items()},
                    "pinned_host_bytes": sum(
                        self.host.host_memory(w.pod["spec"].get("nodeName", "")).pinned.get(e, 0)
                        for e in w.engines.values()
                    ),
                }
            )
        return web.json_response({"pods": out})

    async def _admin_violations(self, req: web.Request) -> web.Response:
        """Every contract violation of every engine, tagged with its pod (`?namespace=` filters)."""
        want = req.query.get("namespace")
        items = []
        for w in [*self.past_workers, *self.workers.values()]:
            if want and w.pod["metadata"]["namespace"] != want:
                continue
            for engine in w.engine_history:
                for v in getattr(engine, "violations", []):
                    items.append({**_violation_json(v), "pod": w.key})
        return web.json_response({"count": len(items), "violations": items})

    async def stop(self) -> None:
        if self._secret_task is not None:
            self._secret_task.cancel()
        for uid in list(self.workers):
            await self._forget(uid)
        await self._registrar.stop()
        await self.host.stop_all()
        if self._http:
            await self._http.close()


def _violation_json(v: Any) -> dict[str, Any]:
    if hasattr(v, "model_dump"):
        d: dict[str, Any] = v.model_dump(mode="json")
        return d
    if hasattr(v, "__dict__"):
        return {k: str(val) for k, val in vars(v).items()}
    return {"violation": str(v)}
