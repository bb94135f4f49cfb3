"""Host memory of simulated nodes: limits read from pod specs, and the per-node report."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from vllm_sleep.testing.kubelet.hostmem import (
    container_memory_limit,
    engine_owners,
    node_report,
    quantity_bytes,
)
from vllm_sleep.testing.sim import GiB, HostMemory, OutOfMemory


@pytest.mark.parametrize(
    ("value", "expected"),
    [("1Ti", 2**40), ("24Gi", 24 * GiB), (1024, 1024), ("16G", 16 * 10**9), (None, None), ("lots", None)],
)  # fmt: skip
def test_quantity_bytes(value: object, expected: int | None) -> None:
    assert quantity_bytes(value) == expected


def test_container_memory_limit() -> None:
    assert container_memory_limit({"resources": {"limits": {"memory": "24Gi"}}}) == 24 * GiB
    assert container_memory_limit({"resources": {"requests": {"memory": "24Gi"}}}) is None
    assert container_memory_limit({}) is None


def test_a_backup_over_the_container_limit_or_the_node_is_an_oom() -> None:
    mem = HostMemory("node-0", limit_bytes=40 * GiB)
    a, b, c = object(), object(), object()
    mem.pin(a, 16 * GiB, owner_limit=24 * GiB)
    with pytest.raises(OutOfMemory, match="container's memory limit"):
        mem.pin(b, 16 * GiB, owner_limit=8 * GiB)
    mem.pin(b, 16 * GiB)
    with pytest.raises(OutOfMemory, match="node-0"):
        mem.pin(c, 16 * GiB)
    assert mem.pinned_bytes == 32 * GiB


def test_node_report_groups_backups_by_pod() -> None:
    e1, e2, e3 = object(), object(), object()
    workers = [
        SimpleNamespace(key="ns/a-0", engine_history=[e1, e2]),  # restarted: two engines
        SimpleNamespace(key="ns/b-0", engine_history=[e3]),
    ]
    owners = engine_owners(workers)
    report = node_report("node-0", 2**40, {e2: 16 * GiB, e3: 8 * GiB}, owners)
    assert report == {
        "node": "node-0",
        "memory_bytes": 2**40,
        "pinned_bytes": 24 * GiB,
        "free_bytes": 2**40 - 24 * GiB,
        "pods": {"ns/a-0": 16 * GiB, "ns/b-0": 8 * GiB},
    }
