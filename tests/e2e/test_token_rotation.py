"""Rotating a model's control token: replace the Secret's value, no pod restarts.

kubelet rewrites the mounted Secret file (here forced with the sim-kubelet's sync; a real kubelet
syncs within about a minute), the agent re-reads it and refuses the old token, and the operator,
refused once, reads the Secret again and keeps sleeping and waking the model."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys

import httpx
import pytest
from kubernetes import client

from conftest import Kube

from .conftest import Proc
from .helpers import apply, model_manifest, model_pods, wait_for, wait_phase

pytestmark = pytest.mark.e2e


def state_status(ip: str, token: str) -> int:
    try:
        r = httpx.get(
            f"http://{ip}:8002/state", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
    except httpx.HTTPError:
        return 0
    return r.status_code


def test_a_rotated_token_is_followed_by_the_agent_and_the_operator(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    env = [{"name": "VLLM_SIM_PROFILE", "value": "0.34"}]
    apply(kube, model_manifest("rot", namespace, env=env, sleep={"idleTimeout": "1h"}))
    wait_phase(kube, namespace, "rot", "Asleep", timeout=120)
    core = client.CoreV1Api(kube.api_client)
    secret_name = "rot-control-token"
    old = base64.b64decode(core.read_namespaced_secret(secret_name, namespace).data["token"])
    ip = next(p.status.pod_ip for p in model_pods(kube, namespace, "rot") if p.status.pod_ip)
    assert state_status(ip, old.decode()) == 200
    assert state_status(ip, "x" * 43) == 401

    new = secrets.token_urlsafe(32)
    core.patch_namespaced_secret(secret_name, namespace, {"stringData": {"token": new}})
    if kube.kubelet_admin_url:
        httpx.post(f"{kube.kubelet_admin_url}/secrets/sync", timeout=30).raise_for_status()
    wait_for(
        lambda: state_status(ip, new) == 200, timeout=150, what="the agent takes the new token"
    )
    assert state_status(ip, old.decode()) == 401
    pod_uid = model_pods(kube, namespace, "rot")[0].metadata.uid

    # The operator still holds the old token: its next call is refused, it reads the Secret
    # again, and the wake goes through.
    subprocess.run(
        [sys.executable, "-m", "vllm_sleep.cli", "wake", "rot", "-n", namespace],
        check=True,
        env={"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )
    wait_phase(kube, namespace, "rot", "Awake", timeout=120)
    assert model_pods(kube, namespace, "rot")[0].metadata.uid == pod_uid  # no pod restarted
