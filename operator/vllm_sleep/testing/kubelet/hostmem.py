"""Host memory of the simulated nodes: what the pinned weight backups of their engines take.

A level-1 sleep copies the weights into pinned host RAM inside the vLLM container's memory
cgroup. vLLM 0.34 makes that backup at the engine's first sleep and keeps it until the process
exits, awake or asleep; older versions free it on wake (docs/simulator.md "GPU memory"). The
simulator's per-node HostMemory does that accounting; the sim-kubelet gives it the node's memory
capacity and each engine its container's memory limit (over either: an OOM kill), and reports it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...api.quantity import QuantityError, parse_quantity


def quantity_bytes(value: object) -> int | None:
    """A Kubernetes memory quantity ("1Ti", "24Gi", 1024) in bytes; None when absent or bad."""
    if value is None:
        return None
    try:
        return int(parse_quantity(value))  # type: ignore[arg-type]
    except (QuantityError, ValueError):
        return None


def container_memory_limit(container: Mapping[str, Any]) -> int | None:
    """The container's memory limit, the cgroup bound a pinned backup must fit in."""
    limits = (container.get("resources") or {}).get("limits") or {}
    return quantity_bytes(limits.get("memory"))


def node_report(
    node: str, capacity_bytes: int | None, pinned: Mapping[object, int], owners: Mapping[int, str]
) -> dict[str, Any]:
    """One node's host memory for the admin API: capacity, pinned total and per pod."""
    by_pod: dict[str, int] = {}
    for engine, n in pinned.items():
        pod = owners.get(id(engine), str(engine))
        by_pod[pod] = by_pod.get(pod, 0) + n
    total = sum(pinned.values())
    return {
        "node": node,
        "memory_bytes": capacity_bytes,
        "pinned_bytes": total,
        "free_bytes": None if capacity_bytes is None else capacity_bytes - total,
        "pods": dict(sorted(by_pod.items())),
    }


def engine_owners(workers: Iterable[Any]) -> dict[int, str]:
    """id(engine) -> "namespace/pod" for every engine the pod workers ran."""
    return {id(e): w.key for w in workers for e in w.engine_history}
