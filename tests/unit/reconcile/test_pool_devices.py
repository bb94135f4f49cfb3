"""A GPUPool's devices from what the cluster publishes, and the DRA claim of each."""

from __future__ import annotations

from typing import Any

from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.reconcile.pool_devices import (
    claim_manifest,
    claim_name,
    no_devices,
    pool_devices,
    schedulable,
    tainted_nodes,
)

DRIVER = "gpu.sim.vllm-sleep.io"


def spec(sharing: str, **extra: Any) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate({"sharing": sharing, "deviceMemory": "80Gi", **extra})


def node(name: str, labels: dict[str, str] | None = None, **alloc: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "status": {"allocatable": alloc},
    }


def slice_(node_name: str, driver: str, *devices: tuple[str, int]) -> dict[str, Any]:
    return {
        "spec": {
            "driver": driver,
            "nodeName": node_name,
            "devices": [{"name": n, "attributes": {"index": {"int": i}}} for n, i in devices],
        }
    }


CLASS = {"spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}}


def test_dra_devices_are_the_class_drivers_slices_on_selected_nodes() -> None:
    nodes = [node("a", {"pool": "x"}), node("b", {"pool": "y"})]
    slices = [
        slice_("a", DRIVER, ("gpu-0", 0), ("gpu-1", 1)),
        slice_("b", DRIVER, ("gpu-0", 0)),  # node not selected
        slice_("a", "other.example.com", ("nic-0", 0)),  # another driver
    ]
    devices = pool_devices(
        spec("DRA", nodeSelector={"pool": "x"}, deviceClassName="sim"), nodes, slices, CLASS
    )
    assert [d.id for d in devices] == ["a/gpu-0", "a/gpu-1"]
    assert devices[1].memory == 80 * 2**30
    assert devices[1].selector == (
        f'device.driver == "{DRIVER}" && device.attributes["{DRIVER}"].index == 1'
    )


def test_time_slicing_counts_physical_gpus_of_nodes_with_the_shared_resource() -> None:
    nodes = [
        node("a", {"nvidia.com/gpu.count": "2"}, **{"nvidia.com/gpu.shared": "8"}),
        node("b", **{"nvidia.com/gpu.shared": "1"}),  # no GFD label: the resource's count
        node("c", **{"nvidia.com/gpu": "4"}),  # does not advertise the pool's resource
    ]
    devices = pool_devices(spec("TimeSlicing", deviceResourceName="nvidia.com/gpu.shared"), nodes)
    assert [d.id for d in devices] == ["a/gpu-0", "a/gpu-1", "b/gpu-0"]


def test_one_claim_per_device_selects_exactly_it() -> None:
    devices = pool_devices(
        spec("DRA", deviceClassName="sim"),
        [node("a")],
        [slice_("a", DRIVER, ("gpu-0", 0), ("gpu-1", 1))],
        CLASS,
    )
    claims = [claim_manifest("ns", "p", d, "sim") for d in devices]
    assert len({c["metadata"]["name"] for c in claims}) == 2
    assert claims[0]["metadata"]["name"] == claim_name("a/gpu-0")
    request = claims[1]["spec"]["devices"]["requests"][0]["exactly"]
    assert request["deviceClassName"] == "sim"
    assert request["selectors"][0]["cel"]["expression"].endswith(".index == 1")
    assert len(claim_name("a-very-long-node-name.example.com/gpu-15" * 3)) <= 63


def test_a_claim_no_pod_of_its_namespace_references_is_unused() -> None:
    from vllm_sleep.reconcile.pool_devices import LABEL_POOL, unused_claims

    def claim(ns: str, name: str, pool: str = "p") -> dict[str, Any]:
        return {"metadata": {"namespace": ns, "name": name, "labels": {LABEL_POOL: pool}}}

    def pod(ns: str, claim_name: str) -> dict[str, Any]:
        refs = [{"name": "gpu", "resourceClaimName": claim_name}]
        return {"metadata": {"namespace": ns}, "spec": {"resourceClaims": refs}}

    claims = [claim("a", "gpu-x"), claim("b", "gpu-x"), claim("a", "gpu-y"), claim("c", "z", "q")]
    pods = [pod("a", "gpu-x"), pod("c", "gpu-y"), {"metadata": {"namespace": "a"}, "spec": {}}]
    # b's copy of gpu-x and a's gpu-y: a pod of another namespace does not keep them; another
    # pool's claim is never this pool's business.
    assert unused_claims("p", claims, pods) == [("a", "gpu-y"), ("b", "gpu-x")]


def tainted(n: dict[str, Any], *taints: dict[str, str]) -> dict[str, Any]:
    return {**n, "spec": {"taints": list(taints)}}


def usable(
    pool: GPUPoolSpec, nodes: list[dict[str, Any]], seated: set[str] | None = None, *rest: Any
) -> list[str]:
    devices = pool_devices(pool, nodes, *rest)
    return [d.node for d in schedulable(pool, devices, nodes, set() if seated is None else seated)]


def test_a_free_device_on_a_node_whose_taints_the_pool_does_not_tolerate_is_left_out() -> None:
    """Its seat would go to a pod the scheduler never binds (Pending forever)."""
    resource = {"nvidia.com/gpu": "1"}
    nodes = [
        tainted(node("plain", **resource)),
        tainted(node("gpu", **resource), {"key": "nvidia.com/gpu", "effect": "NoSchedule"}),
        tainted(node("team", **resource), {"key": "team", "value": "a", "effect": "NoSchedule"}),
        tainted(node("evict", **resource), {"key": "team", "value": "b", "effect": "NoExecute"}),
        tainted(node("soft", **resource), {"key": "x", "effect": "PreferNoSchedule"}),
    ]
    plugin = spec("TimeSlicing", deviceResourceName="nvidia.com/gpu")
    # The operator's toleration of the requested resource lets "gpu" in; PreferNoSchedule only
    # steers the scheduler.
    assert usable(plugin, nodes) == ["gpu", "plain", "soft"]
    team_a = spec(
        "TimeSlicing",
        deviceResourceName="nvidia.com/gpu",
        tolerations=[{"key": "team", "operator": "Equal", "value": "a"}],
    )
    assert usable(team_a, nodes) == ["gpu", "plain", "soft", "team"]
    everything = spec("Exclusive", tolerations=[{"operator": "Exists"}])
    assert len(usable(everything, nodes)) == 5
    assert tainted_nodes(plugin, nodes) == (
        "evict (team=b:NoExecute)",
        "team (team=a:NoSchedule)",
    )


def test_a_device_whose_pod_runs_stays_when_its_node_is_tainted_or_cordoned() -> None:
    """A cordon (or any NoSchedule taint) evicts nothing: the engines there stay counted, so
    their memory is not handed out twice and they can still be woken."""
    cordoned = tainted(
        node("a", **{"nvidia.com/gpu": "2", "nvidia.com/gpu.count": "2"}),
        {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"},
    )
    plugin = spec("TimeSlicing", deviceResourceName="nvidia.com/gpu")
    devices = pool_devices(plugin, [cordoned])
    assert [d.id for d in schedulable(plugin, devices, [cordoned], {"a/gpu-1"})] == ["a/gpu-1"]
    assert schedulable(plugin, devices, [cordoned], None) == devices  # pods not known: all stay


def test_under_dra_the_device_resource_taint_needs_the_pools_toleration() -> None:
    """A DRA pod requests no extended resource, so nothing adds that toleration for it."""
    nodes = [tainted(node("a"), {"key": "nvidia.com/gpu", "effect": "NoSchedule"})]
    slices = [slice_("a", DRIVER, ("gpu-0", 0))]
    dra = spec("DRA", deviceClassName="sim")
    assert usable(dra, nodes, None, slices, CLASS) == []
    assert tainted_nodes(dra, nodes) == ("a (nvidia.com/gpu:NoSchedule)",)
    why = no_devices("p", dra, True, tainted_nodes(dra, nodes))
    assert why.endswith(
        "left out for taints spec.tolerations does not tolerate: a (nvidia.com/gpu:NoSchedule)"
    )
    tolerant = spec(
        "DRA",
        deviceClassName="sim",
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    assert usable(tolerant, nodes, None, slices, CLASS) == ["a"]
