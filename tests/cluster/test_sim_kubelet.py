"""Simulated GPU nodes behave like kubelet on real nodes (issue 4's cluster acceptance)."""

from __future__ import annotations

import time

import httpx
import pytest
from kubernetes import client

from conftest import Kube

TOLERATE_GPU = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def wait_for(pred, timeout: float = 60.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = pred()
        except (client.ApiException, OSError) as e:  # the apiserver may be restarting
            last = e
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


@pytest.fixture(autouse=True)
def _needs_sim_kubelet(kube: Kube) -> None:
    if not kube.kubelet_admin_url:
        pytest.skip("needs the sim-kubelet (local control plane)")


def engine_pod(
    name: str,
    *,
    gates: bool = False,
    claim: str | None = None,
    extra_env: list[dict[str, str]] | None = None,
) -> dict:
    container: dict = {
        "name": "vllm",
        "image": "vllm/vllm-openai:v0.33.0",
        "command": ["vllm", "serve"],
        "args": [
            "meta-llama/Llama-3.1-8B-Instruct",
            "--port",
            "8000",
            "--gpu-memory-utilization",
            "0.3",
        ],
        "env": [{"name": "VLLM_SIM_WEIGHTS_BYTES", "value": "2Gi"}, *(extra_env or [])],
        "ports": [{"name": "http", "containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 1},
        "startupProbe": {
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 600,
        },
    }
    spec: dict = {"tolerations": TOLERATE_GPU, "containers": [container]}
    if gates:
        spec["readinessGates"] = [{"conditionType": "vllm-sleep.io/awake"}]
    if claim:
        spec["resourceClaims"] = [{"name": "gpu", "resourceClaimName": claim}]
        container["resources"] = {"claims": [{"name": "gpu"}]}
    else:
        container["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    return {"metadata": {"name": name}, "spec": spec}


def conditions(p: client.V1Pod) -> dict[str, str]:
    return {c.type: c.status for c in p.status.conditions or []}


def test_engine_pod_runs_then_becomes_ready_after_loading(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_pod(namespace, engine_pod("engine"))
    running = wait_for(
        lambda: (
            (p := core.read_namespaced_pod("engine", namespace)).status.phase == "Running" and p
        ),
        what="Running",
    )
    assert running.status.pod_ip.startswith("127.")
    ready = wait_for(
        lambda: (
            conditions(p := core.read_namespaced_pod("engine", namespace)).get("Ready") == "True"
            and p
        ),
        what="Ready",
    )
    r = httpx.get(f"http://{ready.status.pod_ip}:8000/v1/models", timeout=5)
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "meta-llama/Llama-3.1-8B-Instruct"


def test_readiness_gate_keeps_pod_not_ready_until_set(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_pod(namespace, engine_pod("gated", gates=True))
    wait_for(
        lambda: (
            conditions(core.read_namespaced_pod("gated", namespace)).get("ContainersReady")
            == "True"
        ),
        what="containers ready",
    )
    time.sleep(1.5)
    assert conditions(core.read_namespaced_pod("gated", namespace)).get("Ready") == "False"
    core.patch_namespaced_pod_status(
        "gated",
        namespace,
        {"status": {"conditions": [{"type": "vllm-sleep.io/awake", "status": "True"}]}},
    )
    wait_for(
        lambda: conditions(core.read_namespaced_pod("gated", namespace)).get("Ready") == "True",
        what="Ready after gate",
    )
    core.patch_namespaced_pod_status(
        "gated",
        namespace,
        {"status": {"conditions": [{"type": "vllm-sleep.io/awake", "status": "False"}]}},
    )
    wait_for(
        lambda: conditions(core.read_namespaced_pod("gated", namespace)).get("Ready") == "False",
        what="NotReady after gate closes",
    )


def test_pods_sharing_a_named_claim_share_node_and_device(kube: Kube, namespace: str) -> None:
    objs = client.CustomObjectsApi(kube.api_client)
    claim = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": "gpu-shared"},
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {"deviceClassName": "sim-gpu.vllm-sleep.io", "count": 1},
                    }
                ]
            }
        },
    }
    objs.create_namespaced_custom_object(
        "resource.k8s.io", "v1", namespace, "resourceclaims", claim
    )
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_pod(namespace, engine_pod("a", claim="gpu-shared"))
    core.create_namespaced_pod(namespace, engine_pod("b", claim="gpu-shared"))
    nodes = wait_for(
        lambda: (
            all(n := [core.read_namespaced_pod(p, namespace).spec.node_name for p in ("a", "b")])
            and n
        ),
        what="both bound",
    )
    assert nodes[0] == nodes[1]
    got = objs.get_namespaced_custom_object(
        "resource.k8s.io", "v1", namespace, "resourceclaims", "gpu-shared"
    )
    results = got["status"]["allocation"]["devices"]["results"]
    assert len(results) == 1
    assert {r["name"] for r in got["status"]["reservedFor"]} == {"a", "b"}
    # Both engines account memory on that one simulated device.
    pods = httpx.get(f"{kube.kubelet_admin_url}/pods", timeout=5).json()["pods"]
    mine = [p for p in pods if p["pod"].startswith(f"{namespace}/")]
    assert len(mine) == 2
    # Two engines started at once on one device crash on each other's profiling (as vLLM's
    # do) and restart: stopped now, not over the namespace's graceful deletion, so the
    # worker's next tests do not share a node with their restarts.
    for name in ("a", "b"):
        core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)


def test_an_engine_that_dies_is_restarted(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    # The legacy profile crashes the engine on a request while asleep, as vLLM <= 0.16 does.
    env = [
        {"name": "VLLM_SIM_PROFILE", "value": "legacy"},
        {"name": "VLLM_SERVER_DEV_MODE", "value": "1"},
    ]
    core.create_namespaced_pod(namespace, engine_pod("crashy", extra_env=env))
    ready = wait_for(
        lambda: (
            conditions(p := core.read_namespaced_pod("crashy", namespace)).get("Ready") == "True"
            and p
        ),
        what="Ready",
    )
    base = f"http://{ready.status.pod_ip}:8000"
    assert httpx.post(f"{base}/sleep", params={"level": 1}, timeout=30).status_code == 200
    r = httpx.post(
        f"{base}/v1/completions",
        json={"model": "meta-llama/Llama-3.1-8B-Instruct", "prompt": "x", "max_tokens": 1},
        timeout=30,
    )
    assert r.status_code == 500
    restarted = wait_for(
        lambda: (
            (p := core.read_namespaced_pod("crashy", namespace))
            .status.container_statuses[0]
            .restart_count
            >= 1
            and p
        ),
        what="restart count",
    )
    assert restarted.status.container_statuses[0].last_state.terminated is not None
    wait_for(
        lambda: conditions(core.read_namespaced_pod("crashy", namespace)).get("Ready") == "True",
        what="Ready again",
    )


def test_an_unknown_command_fails_the_container_with_a_reason(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    pod = {
        "metadata": {"name": "odd"},
        "spec": {
            "tolerations": TOLERATE_GPU,
            "containers": [
                {
                    "name": "c",
                    "image": "busybox",
                    "command": ["sleep", "inf"],
                    "resources": {"limits": {"nvidia.com/gpu": "1"}},
                }
            ],
        },
    }
    core.create_namespaced_pod(namespace, pod)

    def waiting() -> client.V1ContainerStateWaiting | None:
        statuses = core.read_namespaced_pod("odd", namespace).status.container_statuses or []
        return (
            statuses[0].state.waiting
            if statuses and statuses[0].state.waiting and statuses[0].state.waiting.message
            else None
        )

    state = wait_for(waiting, what="container waiting with a message")
    assert state.reason == "RunContainerError"
    assert "sleep inf" in state.message


def test_node_host_memory_counts_pinned_backups(kube: Kube, namespace: str) -> None:
    """0.34 keeps an engine's pinned backup from its first sleep on, awake too; the node's host
    memory (the sim-kubelet's /nodes) charges it to the pod until the pod is gone."""
    core = client.CoreV1Api(kube.api_client)
    pod = engine_pod("pinned", extra_env=[{"name": "VLLM_SERVER_DEV_MODE", "value": "1"}])
    pod["spec"]["containers"][0]["resources"]["limits"]["memory"] = "8Gi"
    core.create_namespaced_pod(namespace, pod)
    ready = wait_for(
        lambda: (
            conditions(p := core.read_namespaced_pod("pinned", namespace)).get("Ready") == "True"
            and p
        ),
        what="Ready",
    )
    key, node = f"{namespace}/pinned", ready.spec.node_name

    def pinned() -> int:
        nodes = httpx.get(f"{kube.kubelet_admin_url}/nodes", timeout=5).json()["nodes"]
        report = next(n for n in nodes if n["node"] == node)
        assert report["memory_bytes"] and report["free_bytes"] is not None
        return int(report["pods"].get(key, 0))

    assert pinned() == 0
    url = f"http://{ready.status.pod_ip}:8000"
    assert httpx.post(f"{url}/sleep?level=1", timeout=30).status_code == 200
    assert pinned() == 2 * 2**30
    assert httpx.post(f"{url}/wake_up", timeout=30).status_code == 200
    assert pinned() == 2 * 2**30  # kept while awake
    core.delete_namespaced_pod("pinned", namespace, grace_period_seconds=0)
    wait_for(lambda: pinned() == 0 or None, what="backup released with the pod")


def test_an_operator_built_pod_reports_its_engines_residual_after_its_first_sleep(
    kube: Kube, namespace: str
) -> None:
    """The pod the operator builds for a pooled model: the agent writes vLLM's logging config
    into the shared emptyDir, vLLM logs its sleep report there, and the agent turns it into
    the engine's own residual (docs/agent.md, "Residual memory")."""
    from vllm_sleep.api import GPUPoolSpec, ModelDeploymentSpec
    from vllm_sleep.reconcile.builders import (
        GpuAttachment,
        Owner,
        control_token_secret,
        model_pod,
    )

    core = client.CoreV1Api(kube.api_client)
    node = next(n for n in core.list_node().items if "nvidia.com/gpu.memory" in n.metadata.labels)
    device_mib = int(node.metadata.labels["nvidia.com/gpu.memory"])
    owner = Owner(name="resid", namespace=namespace, uid="no-owner")
    residual = 3 * 2**30  # the simulated engine's own, unlike the pool's assumed 2Gi
    spec = ModelDeploymentSpec.model_validate(
        {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "image": "vllm/vllm-openai:v0.34.0",
            "resources": {"gpuMemoryUtilization": 0.3, "weightsSize": "2Gi"},
            "env": [{"name": "VLLM_SIM_RESIDUAL_BYTES", "value": str(residual)}],
            "tolerations": TOLERATE_GPU,
        }
    )
    pool = GPUPoolSpec.model_validate({"deviceMemory": f"{device_mib}Mi", "sharing": "TimeSlicing"})
    token = "resid-t0ken"
    secret = control_token_secret(owner, token)
    pod = model_pod(owner, spec, 0, agent_image="agent:test", gpu=GpuAttachment(pool))
    for obj in (secret, pod):
        del obj["metadata"]["ownerReferences"]  # no ModelDeployment: the GC would delete them
    core.create_namespaced_secret(namespace, secret)
    core.create_namespaced_pod(namespace, pod)
    ip = wait_for(
        lambda: core.read_namespaced_pod("resid-0", namespace).status.pod_ip, what="a pod IP"
    )
    control = f"http://{ip}:8002"
    auth = {"Authorization": f"Bearer {token}"}

    def state() -> dict:
        try:
            return httpx.get(f"{control}/state", headers=auth, timeout=5).json()
        except httpx.HTTPError:
            return {}

    wait_for(lambda: state().get("state") == "awake", timeout=120, what="engine awake")
    assert state()["residual_bytes"] is None  # nothing measured before a sleep
    r = httpx.post(f"{control}/sleep", params={"level": 1}, headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    report = wait_for(lambda: (s := state()).get("state") == "asleep" and s, what="asleep")
    share = int(0.3 * device_mib * 2**20)
    assert abs(report["residual_bytes"] - residual) <= 6 << 20  # two decimals of GiB
    assert abs(report["freed_bytes"] + report["residual_bytes"] - share) <= 6 << 20


def test_a_pods_volumes_live_under_the_clusters_state_directory(kube: Kube, namespace: str) -> None:
    """So stopping the cluster removes them, though its pods are never stopped one by one (a
    scale run's thousands of pods left as many directories in the system's temp directory)."""
    if kube.own_state_dir is None:
        pytest.skip("needs a cluster this session started")
    core = client.CoreV1Api(kube.api_client)
    pod = engine_pod("vols")
    pod["spec"]["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "scratch", "mountPath": "/scratch"}]
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("vols", namespace).status.phase == "Running",
        what="Running",
    )
    [root] = (kube.own_state_dir / "pods").glob(f"sim-pod-{namespace}-vols-*")
    assert (root / "scratch").is_dir()
