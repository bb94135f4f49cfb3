"""The pool actor counts only the devices its model pods may run on: a tainted node's free
devices are left out (and named when none is left), its devices with running pods stay."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.api.names import ANNOTATION_DEVICE, LABEL_MODEL
from vllm_sleep.controller.pools import PoolActor
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.pool_gate import PoolRequest

SPEC = GPUPoolSpec.model_validate(
    {"sharing": "TimeSlicing", "deviceMemory": "80Gi", "deviceResourceName": "nvidia.com/gpu"}
)
CORDON = {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}


def node(name: str, *taints: dict[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {}},
        "spec": {"taints": list(taints)},
        "status": {
            "allocatable": {"nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def pod_on(device: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "a-0",
            "namespace": "ns",
            "labels": {LABEL_MODEL: "a"},
            "annotations": {ANNOTATION_DEVICE: device},
        }
    }


class Kube:
    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.nodes, self.pods = nodes, pods

    async def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes

    async def list_model_pods(self) -> list[dict[str, Any]]:
        return self.pods

    async def patch_pool_status(self, name: str, status: dict[str, Any]) -> None:
        pass


def read(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> PoolActor:
    a = PoolActor("p", Kube(nodes, pods), OperatorMetrics())  # type: ignore[arg-type]
    asyncio.run(a.refresh(SPEC))
    return a


def test_a_cordoned_node_keeps_the_device_its_pod_runs_on_and_lends_no_free_one() -> None:
    a = read([node("free"), node("busy", CORDON), node("idle", CORDON)], [pod_on("busy/gpu-0")])
    assert [d.id for d in a.devices] == ["busy/gpu-0", "free/gpu-0"]


def test_a_pool_whose_nodes_are_all_tainted_says_which_and_why() -> None:
    asyncio.run(_all_tainted())


async def _all_tainted() -> None:
    kube = Kube([node("n", {"key": "team", "value": "a", "effect": "NoSchedule"})], [])
    a = PoolActor("p", kube, OperatorMetrics())  # type: ignore[arg-type]
    await a.refresh(SPEC)
    assert a.devices == ()
    model = ModelDeployment.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "uid-m"},
            "spec": {
                "model": "org/model",
                "image": "vllm/vllm-openai:v0.33.0",
                "resources": {"gpuMemoryUtilization": 0.3, "weightsSize": "2Gi"},
                "placement": {"pool": "p"},
            },
        }
    )
    never = a.gatekeeper("ns", model, {}, 0.0)(PoolRequest([], {}, {0: "m-0"}, ())).never
    assert never["ns/m-0"].endswith(
        "left out for taints spec.tolerations does not tolerate: n (team=a:NoSchedule)"
    )
    await a.close()
