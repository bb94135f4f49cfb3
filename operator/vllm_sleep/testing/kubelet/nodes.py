"""Simulated GPU nodes: Node objects, their heartbeat Leases, and DRA devices.

The sim-kubelet is the node agent and the DRA driver at once: it registers Nodes the way kubelet
does (create with status), renews their Leases in kube-node-lease so the node lifecycle
controller keeps them Ready, and publishes a DeviceClass and one ResourceSlice per node so the
real kube-scheduler allocates ResourceClaims to simulated GPUs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from ...controller.kube import lean_client
from . import rawapi

log = logging.getLogger(__name__)

DRIVER = "gpu.sim.vllm-sleep.io"
DEVICE_CLASS = "sim-gpu.vllm-sleep.io"
GPU_RESOURCE = "nvidia.com/gpu"
# NVIDIA's device plugin with time-slicing (renameByDefault): each GPU advertised this many times.
GPU_SHARED_RESOURCE = "nvidia.com/gpu.shared"
TIME_SLICES = 4
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
KUBELET_VERSION = "v1.36.3"
# Heartbeats go out for all nodes at once, a few in flight: one at a time, 200 nodes on a busy
# apiserver took longer than the Lease's 40 s and the node lifecycle controller marked healthy
# nodes Unknown. The Lease is the heartbeat (renewed every 10 s); an unchanged node status is
# posted only every nodeStatusReportFrequency, kubelet's default 5 min (a simulated node's status
# changes only when a test loses or restores it, and those post at once).
BEAT_CONCURRENCY = 16
BEAT_TIMEOUT = 10.0  # seconds per heartbeat request: one stuck request must not stall the rest
STATUS_REPORT_SECONDS = 300.0


@dataclass(frozen=True)
class NodeSpec:
    name: str
    gpus: int
    gpu_memory_bytes: int
    cpu: str = "96"
    memory: str = "1Ti"
    pods: int = 250

    def device_names(self) -> list[str]:
        return [f"gpu-{i}" for i in range(self.gpus)]


# How long an exclusive pod waits for a GPU no engine holds (`exclusive_free`) before it takes
# the best there is: the engines of a pod just deleted may still be stopping.
EXCLUSIVE_WAIT_SECONDS = 30.0


def exclusive_free(devices: list[str], engines_on: dict[str, int], taken: frozenset[str]) -> bool:
    """Whether an exclusive pod can have a GPU of its own now: one no exclusive pod has and no
    engine holds memory on. NVIDIA's plugin never hands out a GPU a container still holds; the
    simulated nodes advertise `nvidia.com/gpu` and `nvidia.com/gpu.shared` over the same GPUs
    (docs/local-cluster.md), so a time-sliced test's engines, still stopping after its pods
    were deleted, can be on every GPU when an exclusive pod arrives: it waits for one."""
    return any(d not in taken and not engines_on.get(d, 0) for d in devices)


def choose_device(
    devices: list[str],
    pods_on: dict[str, int],
    engines_on: dict[str, int],
    *,
    exclusive: bool,
    taken: frozenset[str] = frozenset(),
    seat: str | None = None,
) -> str:
    """The GPU a device-plugin pod (no DRA claim) gets on its node.

    The operator's pool scheduler seats a time-sliced pod by annotation; that wins. Otherwise a
    time-sliced pod takes the device with the fewest pods. An exclusive `nvidia.com/gpu` pod
    gets a device of its own, as NVIDIA's plugin allocates it: one no other exclusive pod has
    (`taken`), then one where no engine holds memory (a deleted test's engines may still be
    stopping, and time-sliced engines do not count against `nvidia.com/gpu` in the scheduler),
    then the fewest pods.
    """
    if seat in devices:
        return seat
    if exclusive:
        return min(devices, key=lambda d: (d in taken, engines_on.get(d, 0), pods_on.get(d, 0)))
    return min(devices, key=lambda d: pods_on.get(d, 0))


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_manifest(spec: NodeSpec) -> dict[str, object]:
    capacity = {
        "cpu": spec.cpu,
        "memory": spec.memory,
        "pods": str(spec.pods),
        GPU_RESOURCE: str(spec.gpus),
        GPU_SHARED_RESOURCE: str(spec.gpus * TIME_SLICES),
    }
    ts = now()
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": spec.name,
            "labels": {
                "kubernetes.io/hostname": spec.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "vllm-sleep.io/simulated": "true",
                "nvidia.com/gpu.product": GPU_PRODUCT,
                "nvidia.com/gpu.count": str(spec.gpus),
                "nvidia.com/gpu.memory": str(spec.gpu_memory_bytes // 2**20),  # MiB, as GFD does
            },
        },
        "spec": {"taints": [{"key": GPU_RESOURCE, "value": "present", "effect": "NoSchedule"}]},
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": spec.name},
            ],
            "conditions": _conditions(ts),
            "nodeInfo": {
                "kubeletVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "vllm-sleep-sim://1",
                "kernelVersion": "",
                "osImage": "simulated",
                "kubeProxyVersion": "",
                "machineID": spec.name,
                "systemUUID": spec.name,
                "bootID": spec.name,
            },
        },
    }


def _conditions(ts: str) -> list[dict[str, str]]:
    ok = [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    return [
        {
            "type": t,
            "status": s,
            "reason": r,
            "message": r,
            "lastHeartbeatTime": ts,
            "lastTransitionTime": ts,
        }
        for t, s, r in ok
    ]


def device_class() -> dict[str, object]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DEVICE_CLASS},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }


def resource_slice(spec: NodeSpec) -> dict[str, object]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{spec.name}-{DRIVER}"},
        "spec": {
            "driver": DRIVER,
            "nodeName": spec.name,
            "pool": {"name": spec.name, "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": dev,
                    "attributes": {
                        "productName": {"string": GPU_PRODUCT},
                        "index": {"int": i},
                    },
                    "capacity": {"memory": {"value": str(spec.gpu_memory_bytes)}},
                }
                for i, dev in enumerate(spec.device_names())
            ],
        },
    }


class NodeRegistrar:
    """Registers nodes and keeps them alive until stopped."""

    def __init__(
        self,
        api: client.ApiClient,
        nodes: list[NodeSpec],
        heartbeat: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._api = api
        self._nodes = nodes
        self._heartbeat = heartbeat
        self._clock = clock
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.lost: set[str] = set()  # nodes whose kubelet is gone: no heartbeat, no status

    async def lose(self, name: str, unknown_for: float = 0.0) -> None:
        """The node's kubelet stops: no more Lease renewals or status. Its Ready condition is
        set to Unknown as the node lifecycle controller would once its grace period (50 s by
        default) ran out, dated `unknown_for` seconds back (a test's fast-forward of the
        outage); the controller keeps that date and taints the node unreachable."""
        self.lost.add(name)  # first: no heartbeat or pod status write escapes from here on
        since = datetime.fromtimestamp(datetime.now(UTC).timestamp() - unknown_for, UTC)
        ts = since.strftime("%Y-%m-%dT%H:%M:%SZ")
        reason, message = "NodeStatusUnknown", "Kubelet stopped posting node status."
        conditions = [
            {
                "type": t,
                "status": "Unknown",
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": ts,
                "lastTransitionTime": ts,
            }
            for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")
        ]
        core = client.CoreV1Api(self._api)
        # Heartbeats run in their own thread: one already past its `lost` check may land just
        # after this write and say Ready again. Write until a read shows Unknown.
        for _ in range(5):
            await core.patch_node_status(name, {"status": {"conditions": conditions}})
            await asyncio.sleep(0.5)
            node: Any = await core.read_node(name, _preload_content=False)
            ready = [
                c.get("status")
                for c in ((await node.json()).get("status") or {}).get("conditions") or []
                if c.get("type") == "Ready"
            ]
            if ready == ["Unknown"]:
                return

    async def restore(self, name: str) -> None:
        """The node's kubelet is back: heartbeats and a Ready status again."""
        self.lost.discard(name)
        await self._renew_leases()
        await client.CoreV1Api(self._api).patch_node_status(
            name, {"status": {"conditions": _conditions(now())}}
        )

    async def register(self) -> None:
        core = client.CoreV1Api(self._api)
        for spec in self._nodes:
            body = node_manifest(spec)
            try:
                await core.create_node(body)  # type: ignore[arg-type]  # dicts are accepted
            except ApiException as e:
                if e.status != 409:
                    raise
                await core.patch_node_status(spec.name, {"status": body["status"]})
        await self._publish_dra()
        await self._renew_leases()
        # Heartbeats come from their own thread and event loop: every simulated pod's engine
        # and agent share this process's loop, and a busy stretch there (hundreds of pods
        # starting) delayed renewals past the Lease's 40 s, so every node went NotReady.
        self._thread = threading.Thread(target=self._beat_thread, name="node-heartbeat")
        self._thread.daemon = True
        self._thread.start()

    def _beat_thread(self) -> None:
        async def run() -> None:
            api = lean_client(client.ApiClient(configuration=self._api.configuration))
            try:
                await self._beat(api)
            finally:
                await api.close()

        asyncio.run(run())

    async def _publish_dra(self) -> None:
        objs = client.CustomObjectsApi(self._api)
        for body, plural in [(device_class(), "deviceclasses")] + [
            (resource_slice(s), "resourceslices") for s in self._nodes
        ]:
            try:
                await objs.create_cluster_custom_object("resource.k8s.io", "v1", plural, body)
            except ApiException as e:
                if e.status != 409:
                    raise

    async def _renew_leases(self, api: client.ApiClient | None = None) -> None:
        coord = client.CoordinationV1Api(api or self._api)

        async def renew(spec: NodeSpec) -> None:
            body = {
                "metadata": {"name": spec.name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": spec.name,
                    "leaseDurationSeconds": 40,
                    "renewTime": now(),
                },
            }
            patch = coord.patch_namespaced_lease(
                spec.name,
                "kube-node-lease",
                body,
                _request_timeout=BEAT_TIMEOUT,
                _preload_content=False,
            )
            if not await rawapi.send(patch, absent_ok=True):
                create = coord.create_namespaced_lease(
                    "kube-node-lease",
                    body,  # type: ignore[arg-type]
                    _preload_content=False,
                )
                await rawapi.send(create)

        await _each(renew, [s for s in self._nodes if s.name not in self.lost])

    async def _beat(self, api: client.ApiClient | None = None) -> None:
        core = client.CoreV1Api(api or self._api)

        async def post_status(spec: NodeSpec) -> None:
            if spec.name in self.lost:  # lost while this round ran
                return
            await rawapi.send(
                core.patch_node_status(
                    spec.name,
                    {"status": {"conditions": _conditions(ts)}},
                    _request_timeout=BEAT_TIMEOUT,
                    _preload_content=False,
                )
            )

        reported = self._clock()  # register() posted every node's status
        while not self._stopping.is_set():
            await self._pause(self._heartbeat)
            try:
                await self._renew_leases(api)
                if self._clock() - reported >= STATUS_REPORT_SECONDS:
                    ts = now()
                    await _each(post_status, [s for s in self._nodes if s.name not in self.lost])
                    reported = self._clock()  # a failed round is tried again at the next beat
            except Exception:  # the next beat tries again: the heartbeat never stops for good
                log.warning("node heartbeat failed", exc_info=True)

    async def _pause(self, seconds: float) -> None:
        """Sleep, waking early when stopped (the event is set from another thread)."""
        await asyncio.to_thread(self._stopping.wait, seconds)

    async def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, BEAT_TIMEOUT + 1)


async def _each(call: Callable[[NodeSpec], Awaitable[None]], specs: list[NodeSpec]) -> None:
    """`call` for every node, BEAT_CONCURRENCY at a time; the first error is raised after all ran."""
    gate = asyncio.Semaphore(BEAT_CONCURRENCY)

    async def one(spec: NodeSpec) -> None:
        async with gate:
            await call(spec)

    results = await asyncio.gather(*(one(s) for s in specs), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
