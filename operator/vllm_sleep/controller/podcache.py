"""Model pods as the watch last showed them, so a reconcile pass needs no LIST.

A wake is on a request's critical path: the pass that reacts to demand should go straight to
the agent, not wait for an apiserver round trip first. kopf's pod watch feeds this cache; it is
seeded by one LIST per namespace before its first model's first pass (the watch may not have
delivered yet) and re-listed now and then to heal anything missed. Per namespace, not per model:
a thousand models starting at once make one LIST, not a thousand, and an idle fleet's healing
costs one LIST per namespace per period.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..api.names import LABEL_MODEL


class PodCache:
    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._listed_at: dict[str, float] = {}  # namespace -> when its last LIST was sent
        self._locks: dict[str, asyncio.Lock] = {}

    async def refresh(
        self,
        namespace: str,
        lister: Callable[[], Awaitable[list[dict[str, Any]]]],
        max_age: float,
        now: float,
    ) -> None:
        """Re-list the namespace's model pods unless a LIST sent at most `max_age` before `now`
        (a monotonic time) did; concurrent callers share one LIST."""
        async with self._locks.setdefault(namespace, asyncio.Lock()):
            at = self._listed_at.get(namespace)
            if at is not None and now - at <= max_age:
                return
            pods = await lister()
            self.replace_namespace(namespace, pods)
            self._listed_at[namespace] = now

    def replace_namespace(self, namespace: str, pods: list[dict[str, Any]]) -> None:
        """Every model's pods in the namespace, as one LIST (of pods with the model label) saw
        them: models with no pod in it have none."""
        buckets: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
            key: {} for key in self._pods if key[0] == namespace
        }
        for p in pods:
            model = ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_MODEL)
            if model:
                buckets.setdefault((namespace, model), {})[p["metadata"]["name"]] = p
        self._pods.update(buckets)

    def observe(self, event_type: str | None, pod: dict[str, Any], model: str) -> None:
        meta = pod.get("metadata") or {}
        key = (meta.get("namespace", ""), model)
        bucket = self._pods.setdefault(key, {})
        if event_type == "DELETED":
            current = bucket.get(meta.get("name", ""))
            # A DELETED event of an older pod with the same name must not drop its successor.
            if current is not None and current["metadata"].get("uid") == meta.get("uid"):
                del bucket[meta["name"]]
            return
        name = meta.get("name", "")
        current = bucket.get(name)
        if (
            current is not None
            and _rv(current) > _rv(pod)
            and current["metadata"].get("uid") == meta.get("uid")
        ):
            return  # an older version arriving late (list vs watch race)
        bucket[name] = pod

    def replace(self, namespace: str, model: str, pods: list[dict[str, Any]]) -> None:
        self._pods[(namespace, model)] = {p["metadata"]["name"]: p for p in pods}

    def get(self, namespace: str, model: str) -> list[dict[str, Any]]:
        bucket = self._pods.get((namespace, model), {})
        return [bucket[name] for name in sorted(bucket)]

    def forget(self, namespace: str, model: str) -> None:
        self._pods.pop((namespace, model), None)


def _rv(pod: dict[str, Any]) -> int:
    try:
        return int(pod["metadata"].get("resourceVersion", "0"))
    except ValueError:
        return 0
