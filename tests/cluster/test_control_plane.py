"""The local control plane is real Kubernetes: version, CRDs, RBAC, GC, scheduling, clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kubernetes import client

from conftest import Kube


def wait_for(pred, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}; last={last!r}")


def test_server_version_is_1_36(kube: Kube) -> None:
    version = client.VersionApi(kube.api_client).get_code()
    if kube.kubelet_admin_url is None:
        pytest.skip("external cluster: version is whatever it runs")
    assert version.git_version.startswith("v1.36."), version.git_version


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.test.vllm-sleep.io"},
    "spec": {
        "group": "test.vllm-sleep.io",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                                "required": ["size"],
                            }
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_schema_is_enforced_by_the_server(kube: Kube, namespace: str) -> None:
    api = kube.api_client
    ext = client.ApiextensionsV1Api(api)
    try:
        ext.create_custom_resource_definition(WIDGET_CRD)
    except client.ApiException as e:
        assert e.status == 409
    objs = client.CustomObjectsApi(api)

    def create(spec: dict[str, object]) -> dict[str, object]:
        body = {
            "apiVersion": "test.vllm-sleep.io/v1",
            "kind": "Widget",
            "metadata": {"generateName": "w-"},
            "spec": spec,
        }
        return objs.create_namespaced_custom_object(
            "test.vllm-sleep.io", "v1", namespace, "widgets", body
        )

    # The CRD becomes servable a moment after creation.
    wait_for(lambda: _try(lambda: create({"size": 3})), what="CRD to be served")
    with pytest.raises(client.ApiException) as bad:
        create({"size": "three"})
    assert bad.value.status == 422
    assert "spec.size" in bad.value.body
    with pytest.raises(client.ApiException) as small:
        create({"size": 0})
    assert "spec.size" in small.value.body


def _try(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except client.ApiException:
        return None


def _token_client(kube: Kube, namespace: str, sa: str) -> client.ApiClient:
    core = client.CoreV1Api(kube.api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": sa}})
    tr = core.create_namespaced_service_account_token(
        sa, namespace, {"spec": {"expirationSeconds": 3600}}
    )
    cfg = client.Configuration()
    base = kube.api_client.configuration
    cfg.host, cfg.ssl_ca_cert, cfg.verify_ssl = base.host, base.ssl_ca_cert, base.verify_ssl
    cfg.api_key = {"authorization": f"Bearer {tr.status.token}"}
    return client.ApiClient(cfg)


def test_rbac_denies_then_allows_a_service_account(kube: Kube, namespace: str) -> None:
    sa_api = _token_client(kube, namespace, "reader")
    with pytest.raises(client.ApiException) as denied:
        client.CoreV1Api(sa_api).list_namespaced_config_map(namespace)
    assert denied.value.status == 403
    rbac = client.RbacAuthorizationV1Api(kube.api_client)
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "cm-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "cm-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    wait_for(
        lambda: (
            _try(lambda: client.CoreV1Api(sa_api).list_namespaced_config_map(namespace)) is not None
        ),
        what="RBAC to allow the Role",
    )
    with pytest.raises(client.ApiException) as still_denied:  # the Role grants reads only
        client.CoreV1Api(sa_api).create_namespaced_config_map(
            namespace, {"metadata": {"name": "x"}}
        )
    assert still_denied.value.status == 403


def test_deleting_an_owner_garbage_collects_dependents(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    owner = core.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}})
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "dependent", "ownerReferences": [ref]}}
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: _try(lambda: core.read_namespaced_config_map("dependent", namespace)) is None,
        timeout=60,
        what="dependent to be collected",
    )


def test_scheduler_binds_a_pod_to_a_node_that_fits(kube: Kube, namespace: str) -> None:
    core = client.CoreV1Api(kube.api_client)
    nodes = [
        n
        for n in core.list_node().items
        if n.metadata.labels.get("vllm-sleep.io/simulated") == "true"
    ]
    if not nodes:
        pytest.skip("no simulated GPU nodes in this cluster")
    gpus = int(nodes[0].status.allocatable["nvidia.com/gpu"])

    def pod(name: str, gpu: int) -> dict[str, object]:
        return {
            "metadata": {"name": name},
            "spec": {
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
                "containers": [
                    {
                        "name": "c",
                        "image": "none",
                        "command": ["sleep", "inf"],
                        "resources": {"limits": {"nvidia.com/gpu": str(gpu)}},
                    }
                ],
            },
        }

    core.create_namespaced_pod(namespace, pod("fits", 1))
    core.create_namespaced_pod(namespace, pod("too-big", gpus + 1))
    node = wait_for(
        lambda: core.read_namespaced_pod("fits", namespace).spec.node_name, what="binding"
    )
    assert node in {n.metadata.name for n in nodes}
    time.sleep(1)
    big = core.read_namespaced_pod("too-big", namespace)
    assert big.spec.node_name is None
    conds = {c.type: c for c in big.status.conditions or []}
    assert (
        conds["PodScheduled"].status == "False" and conds["PodScheduled"].reason == "Unschedulable"
    )


def test_dev_down_leaves_no_process(tmp_path: Path, kube: Kube) -> None:
    if kube.kubelet_admin_url is None:
        pytest.skip("external cluster")
    # The pid keeps concurrent runs (xdist workers, other checkouts) out of each other's cluster.
    state_dir = Path("/dev/shm") / f"vso-down-test-{os.getpid()}-{tmp_path.name}"
    cli = [sys.executable, "-m", "vllm_sleep.cli", "dev", "--state-dir", str(state_dir)]
    up = subprocess.run([*cli, "up", "--no-kubelet"], capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stderr
    again = subprocess.run([*cli, "up", "--no-kubelet"], capture_output=True, text=True, timeout=60)
    assert "already running" in again.stdout
    pids = json.loads((state_dir / "state.json").read_text())["pids"]
    assert set(pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
    down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    from vllm_sleep.testing.cluster.processes import pid_alive

    assert [n for n, pid in pids.items() if pid_alive(pid)] == []
    assert not state_dir.exists()
