"""A GPUPool's devices, read from what the cluster publishes, and the DRA claim of each. Pure.

- `DRA`: the devices of the ResourceSlices whose driver serves the pool's DeviceClass, on nodes
  matching the pool's nodeSelector. Each gets one ResourceClaim per namespace that selects
  exactly it (driver, node pin on the pod, and its `uuid` or `index` attribute).
- `TimeSlicing` / `Exclusive`: nodes matching the selector that advertise the pool's extended
  resource; one device per physical GPU (GPU feature discovery's `nvidia.com/gpu.count` label,
  else the resource's capacity), named `gpu-<i>` as the device plugin numbers them.

Only devices a model pod of the pool may run on count: on Ready nodes, and (`schedulable`) not
on a node with a NoSchedule or NoExecute taint the pool's tolerations (and, under TimeSlicing
and Exclusive, the operator's toleration of the device resource the pod requests) leave
untolerated, unless a pod is seated there already. A free device on a node the pod cannot go to
would take a model's seat and leave it Pending; one whose pods run keeps them counted and
wakeable (a cordon or a NoSchedule taint does not evict them).

A device's id is "<node>/<name>": unique in the cluster, and what pods carry in their
`vllm-sleep.io/device` annotation.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..api.common import TaintEffect, Toleration, TolerationOperator, untolerated
from ..api.gpu_pool import GPUPoolSpec, Sharing
from ..api.names import ANNOTATION_DEVICE, GROUP, LABEL_MANAGED_BY, MANAGED_BY
from .node_loss import not_ready

GPU_COUNT_LABEL: Final = "nvidia.com/gpu.count"  # set by GPU feature discovery
CLAIM_REQUEST: Final = "gpu"
LABEL_POOL: Final = f"{GROUP}/pool"  # on the claims the operator creates for a pool
_DRIVER_EXPR = re.compile(r'device\.driver\s*==\s*"([^"]+)"')


@dataclass(frozen=True)
class PoolDevice:
    id: str  # "<node>/<name>"
    node: str
    name: str
    memory: int  # bytes: the pool's deviceMemory (what gpuMemoryUtilization is a share of)
    driver: str | None = None  # DRA driver
    selector: str | None = None  # DRA: CEL that matches this device among its node's


def device_id(node: str, name: str) -> str:
    return f"{node}/{name}"


def node_of(device: str) -> str:
    return device.split("/", 1)[0]


def selector_matches(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def _node_labels(nodes: Iterable[Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    out: dict[str, Mapping[str, str]] = {}
    for n in nodes:
        meta = n.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        out[str(meta.get("name"))] = meta.get("labels") or {}
    return out


def class_driver(device_class: Mapping[str, Any] | None, class_name: str) -> str:
    """The driver a DeviceClass selects (`device.driver == "..."`); by convention the class is
    named after its driver when it says nothing more (gpu.nvidia.com)."""
    for sel in ((device_class or {}).get("spec") or {}).get("selectors") or []:
        m = _DRIVER_EXPR.search(str((sel.get("cel") or {}).get("expression", "")))
        if m:
            return m.group(1)
    return class_name


def dra_devices(
    spec: GPUPoolSpec,
    nodes: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]],
    device_class: Mapping[str, Any] | None,
) -> tuple[PoolDevice, ...]:
    labels = _node_labels(nodes)
    driver = class_driver(device_class, spec.device_class_name)
    memory = spec.device_memory.bytes()
    out: dict[str, PoolDevice] = {}
    for sl in slices:
        s = sl.get("spec") or {}
        node = s.get("nodeName")
        if s.get("driver") != driver or node not in labels:
            continue
        if not selector_matches(spec.node_selector, labels[node]):
            continue
        for dev in s.get("devices") or []:
            name = str(dev.get("name"))
            did = device_id(node, name)
            out[did] = PoolDevice(did, node, name, memory, driver, _exact(driver, dev))
    return tuple(out[k] for k in sorted(out))


def _exact(driver: str, dev: Mapping[str, Any]) -> str:
    """CEL matching this device among the driver's devices of its node (the pod is pinned to
    the node): by `uuid` when published, else by `index`, else by its name as an attribute."""
    attrs: Mapping[str, Any] = dev.get("attributes") or {}
    base = f'device.driver == "{driver}"'
    for key in ("uuid", "index"):
        value = attrs.get(key) or attrs.get(f"{driver}/{key}")
        if not value:
            continue
        if "string" in value:
            return f'{base} && device.attributes["{driver}"].{key} == "{value["string"]}"'
        if "int" in value:
            return f'{base} && device.attributes["{driver}"].{key} == {int(value["int"])}'
    return base


def plugin_devices(spec: GPUPoolSpec, nodes: Iterable[Mapping[str, Any]]) -> tuple[PoolDevice, ...]:
    memory = spec.device_memory.bytes()
    out: list[PoolDevice] = []
    for n in nodes:
        meta = n.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        labels = meta.get("labels") or {}
        if not selector_matches(spec.node_selector, labels):
            continue
        capacity = ((n.get("status") or {}).get("allocatable") or {}).get(spec.device_resource_name)
        if not capacity:
            continue
        count = _int(labels.get(GPU_COUNT_LABEL)) or _int(capacity)
        node = str(meta.get("name"))
        out += [
            PoolDevice(device_id(node, f"gpu-{i}"), node, f"gpu-{i}", memory) for i in range(count)
        ]
    return tuple(sorted(out, key=lambda d: d.id))


def pod_tolerations(spec: GPUPoolSpec) -> list[Toleration]:
    """What every model pod of the pool tolerates whatever its model adds: the pool's
    tolerations and, when the pod requests the device resource (not under DRA), that resource's
    NoSchedule taint, as builders_pod adds it."""
    out = list(spec.tolerations)
    if spec.sharing != Sharing.DRA:
        out.append(
            Toleration(
                key=spec.device_resource_name,
                operator=TolerationOperator.EXISTS,
                effect=TaintEffect.NO_SCHEDULE,
            )
        )
    return out


def blocking_taints(spec: GPUPoolSpec, node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The node's taints that keep the pool's model pods off it."""
    taints = (node.get("spec") or {}).get("taints") or []
    return untolerated(taints, pod_tolerations(spec))


def pool_devices(
    spec: GPUPoolSpec,
    nodes: Iterable[Mapping[str, Any]],
    slices: Iterable[Mapping[str, Any]] = (),
    device_class: Mapping[str, Any] | None = None,
) -> tuple[PoolDevice, ...]:
    nodes = [n for n in nodes if not not_ready(n)]  # a lost node's devices take no seats
    if spec.sharing == Sharing.DRA:
        return dra_devices(spec, nodes, slices, device_class)
    return plugin_devices(spec, nodes)


def _blocked(spec: GPUPoolSpec, nodes: Iterable[Mapping[str, Any]]) -> dict[str, list[Any]]:
    """The Ready nodes matching the pool's selector whose taints keep its pods off, by name,
    with those taints (the only nodes `pool_devices` finds devices on)."""
    out: dict[str, list[Any]] = {}
    for n in nodes:
        meta = n.get("metadata") or {}
        if not_ready(n) or not selector_matches(spec.node_selector, meta.get("labels") or {}):
            continue
        blocking = blocking_taints(spec, n)
        if blocking:
            out[str(meta.get("name"))] = blocking
    return out


def schedulable(
    spec: GPUPoolSpec,
    devices: tuple[PoolDevice, ...],
    nodes: Iterable[Mapping[str, Any]],
    seated: Collection[str] | None,
) -> tuple[PoolDevice, ...]:
    """`devices` without those on a node whose taints keep the pool's pods off it, except the
    ones in `seated` (a pod is there: it runs, and must stay counted and wakeable). `seated`
    None: the pods are not known, so every device stays."""
    if seated is None:
        return devices
    tainted = _blocked(spec, nodes)
    return tuple(d for d in devices if d.node not in tainted or d.id in seated)


def tainted_nodes(spec: GPUPoolSpec, nodes: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The nodes `schedulable` leaves out for their taints, each as "<node> (<key>[=<value>]:
    <effect>, ...)": what `no_devices` names."""
    return tuple(
        f"{name} ({', '.join(_taint_text(t) for t in taints)})"
        for name, taints in sorted(_blocked(spec, nodes).items())
    )


def _taint_text(taint: Mapping[str, Any]) -> str:
    value = f"={taint['value']}" if taint.get("value") else ""
    return f"{taint.get('key')}{value}:{taint.get('effect')}"


def no_devices(
    pool: str, spec: GPUPoolSpec, class_found: bool = True, tainted: tuple[str, ...] = ()
) -> str:
    """Why `pool_devices` found none, in the terms of the pool's spec: the message of a model
    that cannot be placed in it (a typo in the nodeSelector, the resource or the DeviceClass,
    taints the pool does not tolerate). `class_found`: whether the DRA DeviceClass exists (it
    does not without its driver); `tainted`: `tainted_nodes`."""
    if spec.sharing == Sharing.DRA and not class_found:
        return (
            f"GPUPool {pool!r} has no devices: DeviceClass {spec.device_class_name!r} does not "
            "exist (is its DRA driver installed? or fix spec.deviceClassName)"
        )
    nodes = "Ready node"
    if spec.node_selector:
        nodes += f" matching nodeSelector {dict(spec.node_selector)}"
    if spec.sharing == Sharing.DRA:
        offers = (
            f"publishes a ResourceSlice of the driver of DeviceClass {spec.device_class_name!r}"
        )
    else:
        offers = f"advertises {spec.device_resource_name}"
    why = f"GPUPool {pool!r} has no devices: no {nodes} {offers}"
    if tainted:
        why += f" that the pool's pods may run on; left out for taints spec.tolerations does not tolerate: {'; '.join(tainted)}"
    return why


def claim_name(device: str) -> str:
    """The namespace's ResourceClaim for `device`: readable, a DNS label, unique per device."""
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(device.encode()).hexdigest()[:8]
    return f"vllm-sleep-{slug}-{digest}"


def claim_manifest(
    namespace: str, pool: str, device: PoolDevice, device_class_name: str
) -> dict[str, Any]:
    """One ResourceClaim per device and namespace: every pod of the namespace seated on the
    device references it, so kube-scheduler allocates the device once and co-locates them."""
    selector = device.selector or f'device.driver == "{device.driver or device_class_name}"'
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": claim_name(device.id),
            "namespace": namespace,
            "labels": {LABEL_MANAGED_BY: MANAGED_BY, LABEL_POOL: pool},
            "annotations": {ANNOTATION_DEVICE: device.id},
        },
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": CLAIM_REQUEST,
                        "exactly": {
                            "deviceClassName": device_class_name,
                            "selectors": [{"cel": {"expression": selector}}],
                        },
                    }
                ]
            }
        },
    }


def unused_claims(
    pool: str, claims: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """(namespace, name) of the pool's claims that no pod of their namespace references.

    Pods of several models share a claim, so no owner reference can delete it: the pool's
    actor does, once its last pod is gone (a pod being deleted still references it)."""
    used = {
        ((p.get("metadata") or {}).get("namespace", ""), str(c.get("resourceClaimName")))
        for p in pods
        for c in ((p.get("spec") or {}).get("resourceClaims") or [])
    }
    out: list[tuple[str, str]] = []
    for c in claims:
        meta = c.get("metadata") or {}
        if (meta.get("labels") or {}).get(LABEL_POOL) != pool or meta.get("deletionTimestamp"):
            continue
        key = (str(meta.get("namespace", "")), str(meta.get("name")))
        if key not in used:
            out.append(key)
    return sorted(out)


def _int(value: object) -> int:
    try:
        return max(0, int(str(value)))
    except ValueError:
        return 0
