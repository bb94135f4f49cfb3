"""Model pods as the watch last showed them, so a reconcile pass needs no LIST.

A wake is on a request's critical path: the pass that reacts to demand should go straight to
the agent, not wait for an apiserver round trip first. kopf's pod watch feeds this cache; each
model's controller seeds it with one LIST when it starts (the watch may not have delivered yet)
and re-lists now and then to heal anything missed.
"""

from __future__ import annotations

from typing import Any


class PodCache:
    def __init__(self) -> None:
        self._pods: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}

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
