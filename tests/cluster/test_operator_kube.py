"""The operator's Kubernetes calls (controller/kube.py) against a real apiserver.

Its reads and writes skip the generated client's models (too costly per pass), and without them
the client raises nothing on its own: these tests pin that errors still raise, with the status.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
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


def test_create_if_missing_says_whether_it_created_and_errors_raise(
    kube: Kube, namespace: str
) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "probe-secret", "namespace": namespace},
        "stringData": {"k": "v"},
    }

    async def body(k: OperatorKube) -> tuple[bool, bool, int]:
        first = await k.create_if_missing(secret)
        again = await k.create_if_missing(secret)
        bad = {**secret, "metadata": {"name": "Not_A_Name", "namespace": namespace}}
        try:
            await k.create_if_missing(bad)
        except ApiException as e:
            return first, again, int(e.status)
        return first, again, 0

    assert run(kube, body) == (True, False, 422)


def test_status_writes_of_one_model_within_the_window_end_with_the_latest(
    kube: Kube, namespace: str
) -> None:
    name = "coalesced"
    crds = Path(__file__).resolve().parents[2] / "crds"
    kube.apply_crds(crds)
    applied = kube.kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        input=f"""
apiVersion: vllm-sleep.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: {namespace}}}
spec: {{model: m, image: i, resources: {{weightsSize: 1Gi}}}}
""",
    )
    assert applied.returncode == 0, applied.stderr

    async def body(k: OperatorKube) -> None:
        for phase in ("Pending", "Loading", "Asleep"):
            await k.patch_model_status(namespace, name, {"phase": phase})
        await k.model_status.drain()

    run(kube, body)
    out = kube.kubectl(
        "get", "modeldeployment", name, "-n", namespace, "-o", "jsonpath={.status.phase}"
    )
    assert out.stdout.strip() == "Asleep"


def test_a_pod_list_is_read_in_pages_that_add_up_to_the_whole(kube: Kube, namespace: str) -> None:
    pods = "\n---\n".join(
        f"""
apiVersion: v1
kind: Pod
metadata:
  name: paged-{i}
  namespace: {namespace}
  labels: {{{LABEL_MODEL}: paged}}
spec:
  nodeName: nowhere
  containers: [{{name: c, image: x}}]
"""
        for i in range(5)
    )
    kube.kubectl("apply", "-f", "-", input=pods)

    async def body(k: OperatorKube) -> Any:
        k.list_page = 2  # three pages, continued by the apiserver's tokens
        return await k.list_pods(namespace, f"{LABEL_MODEL}=paged"), await k.list_model_pods()

    listed, every = run(kube, body)
    assert sorted(p["metadata"]["name"] for p in listed) == [f"paged-{i}" for i in range(5)]
    assert all("managedFields" not in p["metadata"] for p in listed)
    # The pools' inventory: every model pod of every namespace, whole (its spec is read).
    mine = [p for p in every if p["metadata"]["namespace"] == namespace]
    assert sorted(p["metadata"]["name"] for p in mine) == [f"paged-{i}" for i in range(5)]
    assert all(p["spec"]["nodeName"] == "nowhere" for p in mine)
