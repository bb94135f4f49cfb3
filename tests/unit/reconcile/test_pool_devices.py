"""A GPUPool's devices from what the cluster publishes, and the DRA claim of each."""

from __future__ import annotations

from typing import Any

from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.reconcile.pool_devices import claim_manifest, claim_name, pool_devices

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
