"""Model pods as the watch last showed them, so a reconcile pass needs no LIST.

A wake is on a request's critical path: the pass that reacts to demand should go straight to
the agent, not wait for an apiserver round trip first. kopf's pod watch feeds this cache; it is
seeded by one LIST per namespace (read in pages, `Kube.list_pods`) before its first model's
first pass (the watch may not have delivered yet) and re-listed now and then to heal anything
missed. Per namespace, not per model: a thousand models starting at once make one LIST, not a
thousand, and an idle fleet's healing costs one LIST per namespace per period. A heal runs in
the background (a slow LIST of a big namespace must not stall every model's pass, a waking one
included), and what the watch brought while it ran wins over the LIST's older snapshot.

Pods are kept slim: what `reconcile.observe.observe_pod` reads (metadata without managedFields,
status, spec.nodeName), about 40 % of a whole pod's memory; a thousand whole pods were ~60 MB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..api.names import LABEL_MODEL

log = logging.getLogger(__name__)

Lister = Callable[[], Awaitable[list[dict[str, Any]]]]


class PodCache:
    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        # Watch events counted, and the count at each pod's last event (its name's, for a
        # delete): a LIST sent at count N is older than anything observed after N.
        self._seq = 0
        self._seen: dict[tuple[str, str], int] = {}  # (namespace, pod) -> event count
        self._listed_at: dict[str, float] = {}  # namespace -> when its last LIST was sent
        self._locks: dict[str, asyncio.Lock] = {}
        self._healing: dict[str, asyncio.Task[None]] = {}

    async def refresh(self, namespace: str, lister: Lister, max_age: float, now: float) -> None:
        """Seed the namespace (one LIST, shared by concurrent callers) or, once seeded, start a
        background re-list when the last is older than `max_age` (`now`: a monotonic time)."""
        if namespace in self._listed_at:
            if now - self._listed_at[namespace] > max_age and namespace not in self._healing:
                self._listed_at[namespace] = now
                task = asyncio.create_task(self._heal(namespace, lister))
                self._healing[namespace] = task
                task.add_done_callback(lambda _t: self._healing.pop(namespace, None))
            return
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            if namespace not in self._listed_at:
                await self.relist(namespace, lister)
                self._listed_at[namespace] = now

    async def _heal(self, namespace: str, lister: Lister) -> None:
        try:
            await self.relist(namespace, lister)
        except Exception:  # the watch still feeds the cache; the next period tries again
            log.warning("re-list of model pods in %s failed", namespace, exc_info=True)

    async def relist(self, namespace: str, lister: Lister) -> None:
        sent = self._seq
        self.merge(namespace, await lister(), sent)

    def merge(self, namespace: str, pods: list[dict[str, Any]], sent: int) -> None:
        """Every model's pods in `namespace` from a LIST sent when the event count was `sent`:
        a pod the watch showed (or deleted) since keeps the watch's word; any other pod is as
        the LIST says, and one it does not show is gone."""
        buckets: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
            key: {
                name: pod
                for name, pod in bucket.items()
                if self._seen.get((namespace, name), 0) > sent
            }
            for key, bucket in self._pods.items()
            if key[0] == namespace
        }
        for p in pods:
            name = p["metadata"]["name"]
            model = ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL)
            if model and self._seen.get((namespace, name), 0) <= sent:
                buckets.setdefault((namespace, model), {})[name] = slim(p)
        self._pods.update(buckets)

    def observe(self, event_type: str | None, pod: dict[str, Any], model: str) -> None:
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace", ""), model)
        bucket = self._pods.setdefault(key, {})
        name = meta.get("name", "")
        self._seq += 1
        if event_type == "DELETED":
            current = bucket.get(name)
            # A DELETED event of an older pod with the same name must not drop its successor.
            if current is None or current["metadata"].get("uid") == meta.get("uid"):
                bucket.pop(name, None)
                self._seen[(key[0], name)] = self._seq  # a LIST sent before must not revive it
            return
        current = bucket.get(name)
        if (
            current is not None
            and _rv(current) > _rv(pod)
            and current["metadata"].get("uid") == meta.get("uid")
        ):
            return  # an older version arriving late (list vs watch race)
        bucket[name] = slim(pod)
        self._seen[(key[0], name)] = self._seq

    def replace(self, namespace: str, model: str, pods: list[dict[str, Any]]) -> None:
        self._pods[(namespace, model)] = {p["metadata"]["name"]: slim(p) for p in pods}

    def get(self, namespace: str, model: str) -> list[dict[str, Any]]:
        bucket = self._pods.get((namespace, model), {})
        return [bucket[name] for name in sorted(bucket)]

    def forget(self, namespace: str, model: str) -> None:
        for name in self._pods.pop((namespace, model), {}):
            self._seen.pop((namespace, name), None)


# What a pass reads of a pod's status (`reconcile.observe.observe_pod`), and of each container's.
STATUS_KEYS = ("phase", "podIP", "conditions", "containerStatuses")
CONTAINER_STATUS_KEYS = ("name", "ready", "restartCount", "state", "lastState")


def slim(pod: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod a reconcile pass reads (shallow: the watch's dicts are not mutated).

    Kept for every model pod for as long as it lives: the status is cut to what a pass reads
    (no init containers' statuses, no images, IDs, host IPs or start times), which was most of
    a cached pod."""
    meta = {k: v for k, v in (pod.get("metadata") or {}).items() if k != "managedFields"}
    node = (pod.get("spec") or {}).get("nodeName")
    whole = pod.get("status") or {}
    status = {k: whole[k] for k in STATUS_KEYS if k in whole}
    if "containerStatuses" in status:
        status["containerStatuses"] = [
            {k: c[k] for k in CONTAINER_STATUS_KEYS if k in c} for c in status["containerStatuses"]
        ]
    return {
        "metadata": meta,
        "spec": {"nodeName": node} if node else {},
        "status": status,
    }


def _rv(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"].get("resourceVersion", "0"))
    except ValueError:
        return 0
