"""The operator's Kubernetes calls (controller/kube.py) against a real apiserver.

Its reads and writes skip the generated client's models (too costly per pass), and without them
the client raises nothing on its own: these tests pin that errors still raise, with the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes_asyncio import config
from kubernetes_asyncio.client.exceptions import ApiException

from conftest import Kube
from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL
from vllm_sleep.controller.kube import Kube as OperatorKube

pytestmark = pytest.mark.cluster


def run(kube: Kube, body: Any) -> Any:
    async def main() -> Any:
        api = await config.new_client_from_config(config_file=str(kube.kubeconfig))
        async with api:
            return await body(OperatorKube(api))

    return asyncio.run(main())


@pytest.fixture
def pod(kube: Kube, namespace: str) -> Iterator[str]:
    manifest = f"""
apiVersion: v1
kind: Pod
metadata:
  name: probe
  namespace: {namespace}
  labels: {{{LABEL_MODEL}: probe}}
spec:
  nodeName: nowhere
  containers: [{{name: c, image: x}}]
"""
    kube.kubectl("apply", "-f", "-", input=manifest)
    yield "probe"


def test_reads_and_writes_work_without_the_generated_models(
    kube: Kube, namespace: str, pod: str
) -> None:
    async def body(k: OperatorKube) -> Any:
        await k.set_routed(namespace, pod, True, "EngineAwake")
        await k.annotate_pod(namespace, pod, {"example.com/a": "1"})
        return await k.list_pods(namespace, f"{LABEL_MODEL}=probe")

    pods = run(kube, body)
    assert [p["metadata"]["name"] for p in pods] == [pod]
    assert pods[0]["metadata"]["annotations"]["example.com/a"] == "1"
    conds = {c["type"]: c["status"] for c in pods[0]["status"].get("conditions", [])}
    assert conds[CONDITION_AWAKE] == "True"


def test_errors_still_raise_with_their_status(kube: Kube, namespace: str) -> None:
    async def body(k: OperatorKube) -> int:
        try:
            await k.set_routed(namespace, "no-such-pod", True, "EngineAwake")
        except ApiException as e:
            return int(e.status)
        return 0

    assert run(kube, body) == 404

    async def listing(k: OperatorKube) -> int:
        try:
            await k.list_pods(namespace, "a in (b")  # a selector the apiserver refuses
        except ApiException as e:
            return int(e.status)
        return 0

    assert run(kube, listing) == 400

    async def missing(k: OperatorKube) -> None:
        await k.annotate_pod(namespace, "no-such-pod", {"example.com/a": "1"})  # 404 is quiet

    run(kube, missing)


def test_a_missing_node_reads_as_none_an_existing_one_as_its_object(kube: Kube) -> None:
    async def body(k: OperatorKube) -> tuple[Any, list[dict[str, Any]]]:
        return await k.get_node("no-such-node"), await k.list_nodes()

    missing, nodes = run(kube, body)
    assert missing is None and nodes
    name = nodes[0]["metadata"]["name"]

    async def one(k: OperatorKube) -> Any:
        return await k.get_node(name)

    assert run(kube, one)["metadata"]["name"] == name
