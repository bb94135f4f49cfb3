"""The local cluster's fault injection, which the chaos test (tests/e2e/test_chaos.py) relies on:
a control-plane process crashed and restarted keeps the cluster's data; the sim-kubelet kills a
pod's container (kubelet restarts it) and loses and restores a node."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from kubernetes import client
from test_sim_kubelet import TOLERATE_GPU, wait_for

from conftest import Kube


def cluster_state(kube: Kube) -> Any:
    from vllm_sleep.testing.cluster.controlplane import ClusterState
    from vllm_sleep.testing.cluster.main import DEFAULT_STATE

    for where in (kube.own_state_dir, DEFAULT_STATE):
        state = ClusterState.load(where) if where else None
        if state is not None and state.kubeconfig == str(kube.kubeconfig) and state.launches:
            return state
    pytest.skip("needs the local control plane")


def engine_pod(name: str, node: str) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/health", "port": 8000}, "periodSeconds": 1}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "tolerations": TOLERATE_GPU,
            "containers": [
                {
                    "name": "vllm",
                    "image": "vllm/vllm-openai:v0.33.0",
                    "command": ["vllm", "serve"],
                    "args": ["m", "--port", "8000", "--gpu-memory-utilization", "0.2"],
                    "env": [{"name": "VLLM_SIM_WEIGHTS_BYTES", "value": "1Gi"}],
                    "readinessProbe": probe,
                }
            ],
        },
    }


def ready(node: client.V1Node) -> str | None:
    return next((c.status for c in node.status.conditions or [] if c.type == "Ready"), None)


@pytest.mark.timeout(240)
@pytest.mark.parametrize("name", ["etcd", "kube-apiserver"])
def test_a_crashed_control_plane_process_restarts_with_its_data(
    kube: Kube, namespace: str, name: str
) -> None:
    from vllm_sleep.testing.cluster.controlplane import restart

    state = cluster_state(kube)
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "kept"}, "data": {"k": "v"}})
    old_pid = state.pids[name]
    restart(state, name)
    assert state.pids[name] != old_pid
    again = client.CoreV1Api(kube.api_client)
    kept = wait_for(lambda: again.read_namespaced_config_map("kept", namespace), 60, "read back")
    assert kept.data == {"k": "v"}


@pytest.mark.timeout(180)
def test_a_killed_container_is_restarted_and_a_lost_node_comes_back(
    kube: Kube, namespace: str
) -> None:
    if not kube.kubelet_admin_url:
        pytest.skip("needs the sim-kubelet")
    admin = httpx.Client(base_url=kube.kubelet_admin_url, timeout=10)
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_pod(namespace, engine_pod("victim", "gpu-node-1"))

    def running() -> Any:
        pod = core.read_namespaced_pod("victim", namespace)
        statuses = pod.status.container_statuses or []
        return pod if statuses and statuses[0].ready else None

    wait_for(running, 60, "victim ready")
    r = admin.post(f"/pods/{namespace}/victim/kill", params={"container": "vllm"})
    assert r.status_code == 200, r.text
    assert (
        admin.post(f"/pods/{namespace}/victim/kill", params={"container": "x"}).status_code == 409
    )
    assert admin.post(f"/pods/{namespace}/nobody/kill").status_code == 404

    def restarted() -> Any:
        pod = running()
        return pod if pod and pod.status.container_statuses[0].restart_count >= 1 else None

    wait_for(restarted, 60, "victim restarted")

    try:
        r = admin.post("/nodes/gpu-node-1/lose", params={"unknown_for": "30"})
        assert r.status_code == 200 and r.json()["pods"] >= 1, r.text
        node = core.read_node("gpu-node-1")
        assert ready(node) == "Unknown"
        cond = next(c for c in node.status.conditions if c.type == "Ready")
        assert time.time() - cond.last_transition_time.timestamp() >= 29
        pods = [p["pod"] for p in admin.get("/pods").json()["pods"]]
        assert f"{namespace}/victim" not in pods  # its containers died with the node
        assert admin.post("/nodes/nowhere/lose").status_code == 404
    finally:
        assert admin.post("/nodes/gpu-node-1/restore").status_code == 200

    def back() -> bool:
        node = core.read_node("gpu-node-1")
        taints = [t.key for t in node.spec.taints or [] if t.key.startswith("node.kubernetes.io/")]
        return ready(node) == "True" and not taints  # the next test may schedule there

    wait_for(back, 60, "node Ready and untainted again")
    core.delete_namespaced_pod("victim", namespace, grace_period_seconds=0)
