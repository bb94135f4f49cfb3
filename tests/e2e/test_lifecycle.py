"""One model's whole lifecycle through public interfaces (issue 5's acceptance).

The simulator runs vLLM's `legacy` (<=0.16) behaviour: a request that reached a sleeping engine
would crash it, and the sim-kubelet's violation log would show it. Every test ends asserting
zero violations.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import httpx
import pytest

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, events, model_manifest, model_pods, wait_for, wait_phase

DEV_PATHS = [
    ("POST", "/sleep?level=1"),
    ("POST", "/wake_up"),
    ("GET", "/is_sleeping"),
    ("POST", "/collective_rpc"),
    ("POST", "/reset_prefix_cache"),
    ("POST", "/pause"),
    ("GET", "/server_info"),
]


def violations(kubelet_admin: httpx.Client, namespace: str) -> list[dict[str, object]]:
    data = kubelet_admin.get("/violations", params={"namespace": namespace}).json()
    return list(data["violations"])


def pod_url(kube: Kube, namespace: str, name: str) -> str:
    pods = wait_for(
        lambda: [p for p in model_pods(kube, namespace, name) if p.status.pod_ip], what="pod IP"
    )
    return f"http://{pods[0].status.pod_ip}:8000"


@pytest.mark.parametrize("profile", ["legacy", "0.33", "0.34"])
def test_apply_prewarm_wake_on_request_idle_sleep(
    kube: Kube, namespace: str, operator: Proc, kubelet_admin: httpx.Client, profile: str
) -> None:
    """The same lifecycle on every vLLM behaviour the simulator knows (docs/simulator.md)."""
    env = [{"name": "VLLM_SIM_PROFILE", "value": profile}]
    apply(kube, model_manifest("llama", namespace, sleep={"idleTimeout": "3s"}, env=env))
    obj = wait_phase(kube, namespace, "llama", "Asleep", timeout=120)
    assert obj["status"]["replicas"][0]["state"] == "Asleep"
    reasons = [e.reason for e in events(kube, namespace, "llama")]
    assert "Slept" in reasons, reasons  # the pre-warm sleep

    url = pod_url(kube, namespace, "llama")
    # A request at the pod while asleep is held by the agent; the operator sees it and wakes.
    r = httpx.post(f"{url}/v1/chat/completions", json=chat("llama"), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"]
    wait_phase(kube, namespace, "llama", "Awake", timeout=30)
    # Idle for idleTimeout -> asleep again.
    wait_phase(kube, namespace, "llama", "Asleep", timeout=60)
    assert "Woke" in [e.reason for e in events(kube, namespace, "llama")]
    assert violations(kubelet_admin, namespace) == []


def test_dev_endpoints_unreachable_and_control_port_needs_token(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    apply(kube, model_manifest("guarded", namespace))
    wait_phase(kube, namespace, "guarded", "Asleep", timeout=120)
    url = pod_url(kube, namespace, "guarded")
    for method, path in DEV_PATHS:
        r = httpx.request(method, url + path, timeout=10)
        assert r.status_code == 404, (path, r.status_code, r.text)
    ip = url.split("//")[1].split(":")[0]
    with pytest.raises(httpx.ConnectError):  # vLLM itself is not on the pod IP at all
        httpx.get(f"http://{ip}:8001/health", timeout=5)
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(f"http://{ip}:8002/wake", headers=headers, timeout=10)
        assert r.status_code == 401


def test_many_requests_with_sleeps_and_wakes_interleaved_never_reach_a_sleeping_engine(
    kube: Kube, namespace: str, operator: Proc, kubelet_admin: httpx.Client
) -> None:
    apply(kube, model_manifest("busy", namespace, sleep={"idleTimeout": "1s"}))
    wait_phase(kube, namespace, "busy", "Asleep", timeout=120)
    url = pod_url(kube, namespace, "busy")

    async def run() -> list[int]:
        codes: list[int] = []
        rng = random.Random(7)
        async with httpx.AsyncClient(timeout=120) as client:

            async def one(i: int) -> None:
                r = await client.post(
                    f"{url}/v1/chat/completions", json=chat("busy", f"req {i}", max_tokens=2)
                )
                codes.append(r.status_code)

            sent = 0
            while sent < 1000:
                burst = rng.randint(20, 120)
                await asyncio.gather(*(one(sent + k) for k in range(burst)))
                sent += burst
                # Pauses longer than idleTimeout let the model fall asleep between bursts.
                await asyncio.sleep(rng.choice([0.0, 0.1, 2.5]))
        return codes

    codes = asyncio.run(run())
    assert len(codes) >= 1000
    assert set(codes) == {200}, {c: codes.count(c) for c in set(codes)}
    assert sum(e.reason == "Woke" for e in events(kube, namespace, "busy")) >= 2
    assert violations(kubelet_admin, namespace) == []


def test_kubectl_get_shows_state_columns(kube: Kube, namespace: str, operator: Proc) -> None:
    # A served name of its own: another test's model in this cluster may claim the default one
    # first, and a model refused its served name is not Ready.
    apply(kube, model_manifest("cols", namespace, servedModelName=f"cols-{namespace}"))
    wait_phase(kube, namespace, "cols", "Asleep", timeout=120)
    out = kube.kubectl("get", "mdep", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header[:7] == ["NAME", "STATE", "READY", "AWAKE", "POOL", "LAST-ACTIVITY", "AGE"], out
    assert out.splitlines()[1].split()[1:3] == ["Asleep", "True"], out


def test_unfulfillable_model_reports_a_condition_and_the_operator_keeps_running(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    from .helpers import get_model

    apply(kube, model_manifest("lost", namespace, placement={"pool": "no-such-pool"}))

    def degraded() -> dict[str, object] | None:
        conds = {
            c["type"]: c
            for c in (get_model(kube, namespace, "lost").get("status") or {}).get("conditions", [])
        }
        return conds if conds.get("Degraded", {}).get("status") == "True" else None

    conds = wait_for(degraded, timeout=60, what="Degraded condition")
    assert "no-such-pool" in conds["Degraded"]["message"]
    assert conds["Scheduled"]["status"] == "False"
    assert model_pods(kube, namespace, "lost") == []
    assert "CannotPlace" in [e.reason for e in events(kube, namespace, "lost")]
    assert operator.proc is not None and operator.proc.poll() is None
    # Fixing the object (GitOps edit) recovers it.
    apply(kube, model_manifest("lost", namespace, placement={"pool": None}))
    wait_phase(kube, namespace, "lost", "Asleep", timeout=120)


def test_cli_wake_sleep_and_status(kube: Kube, namespace: str, operator: Proc) -> None:
    import subprocess
    import sys

    apply(kube, model_manifest("cli", namespace))
    wait_phase(kube, namespace, "cli", "Asleep", timeout=120)
    env = {"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "vllm_sleep.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    woke = cli("wake", "cli", "-n", namespace, "--wait", "--timeout", "60")
    assert woke.returncode == 0, woke.stderr
    assert "is Awake" in woke.stdout
    slept = cli("sleep", "cli", "-n", namespace, "--wait", "--timeout", "60")
    assert slept.returncode == 0, slept.stderr
    assert "is Asleep" in slept.stdout
    status = cli("status", "-n", namespace)
    assert status.returncode == 0, status.stderr
    assert "cli" in status.stdout and "Asleep" in status.stdout
    missing = cli("wake", "nope", "-n", namespace)
    assert missing.returncode == 1 and '"nope" not found' in missing.stderr


def test_an_engine_that_cannot_start_makes_the_model_failed_with_the_reason(
    kube: Kube, namespace: str, operator: Proc
) -> None:
    # 100 GiB of weights leave no room for a KV cache in 90 % of 80 GiB: vLLM refuses to start,
    # again and again (crash loop).
    apply(
        kube,
        model_manifest(
            "huge", namespace, resources={"gpuMemoryUtilization": 0.9, "weightsSize": "100Gi"}
        ),
    )
    obj = wait_phase(kube, namespace, "huge", "Failed", timeout=120)
    replica = obj["status"]["replicas"][0]
    assert replica["state"] == "Failed"
    assert "no available memory for the cache blocks" in replica["message"].lower()
    conds = {c["type"]: c for c in obj["status"]["conditions"]}
    assert (
        conds["Degraded"]["status"] == "True"
        and "gpu_memory_utilization" in conds["Degraded"]["message"]
    )
    assert "EngineFailed" in [e.reason for e in events(kube, namespace, "huge")]
    assert operator.proc is not None and operator.proc.poll() is None


def test_a_spec_change_replaces_one_replica_at_a_time(
    kube: Kube, namespace: str, operator: Proc, kubelet_admin: httpx.Client
) -> None:
    """A new image or new arguments replace every pod, but never all replicas at once: while
    one is replaced the other can serve (docs/operator.md, reconcile/rollout.py)."""
    import time

    from kubernetes import client

    from .helpers import get_model

    name = "rolling"
    apply(kube, model_manifest(name, namespace, replicas=2))

    def states() -> dict[str, str]:
        status = get_model(kube, namespace, name).get("status") or {}
        return {r["pod"]: r.get("state", "") for r in status.get("replicas") or []}

    wait_for(
        lambda: len(states()) == 2 and set(states().values()) == {"Asleep"},
        timeout=120,
        what="both replicas pre-warmed",
    )
    old = {p.metadata.uid for p in model_pods(kube, namespace, name)}
    assert len(old) == 2
    env = [{"name": "VLLM_SIM_PROFILE", "value": "legacy"}, {"name": "ROLLOUT", "value": "2"}]
    apply(kube, model_manifest(name, namespace, replicas=2, env=env))

    core = client.CoreV1Api(kube.api_client)
    deadline = time.monotonic() + 180
    fewest_serving = 2
    while True:
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"vllm-sleep.io/model={name}"
        ).items
        by_name: dict[str, list[Any]] = {}
        for p in pods:
            by_name.setdefault(p.metadata.name, []).append(p)
        seen = states()
        serving = 0
        for pod_name in ("rolling-0", "rolling-1"):
            present = by_name.get(pod_name, [])
            old_live = [
                p for p in present if p.metadata.uid in old and not p.metadata.deletion_timestamp
            ]
            new = [p for p in present if p.metadata.uid not in old]
            if old_live or any(_engine_loaded(p) for p in new):
                serving += 1
        fewest_serving = min(fewest_serving, serving)
        assert serving >= 1, (seen, [(p.metadata.name, p.metadata.uid) for p in pods])
        replaced = {p.metadata.uid for p in pods} & old == set() and len(pods) == 2
        if replaced and set(seen.values()) == {"Asleep"} and len(seen) == 2:
            break
        assert time.monotonic() < deadline, f"not replaced in 180 s: {seen}"
        time.sleep(0.2)
    assert fewest_serving == 1  # the replacement happened, one replica at a time
    assert violations(kubelet_admin, namespace) == []


def _engine_loaded(pod: Any) -> bool:
    """The pod's engine has loaded (awake or asleep: it can serve, after a wake if asleep), as
    the engine itself says at its loopback port (the status lags by its write window)."""
    from vllm_sleep.api import names
    from vllm_sleep.testing.kubelet.ips import private_twin

    ip = pod.status.pod_ip
    if not ip or pod.metadata.deletion_timestamp:
        return False
    try:
        # A slow answer on a starved host still says the state: only no answer means "no".
        r = httpx.get(f"http://{private_twin(ip)}:{names.VLLM_PORT}/_sim/state", timeout=10)
        return r.status_code == 200 and r.json().get("state") in ("awake", "sleeping")
    except httpx.HTTPError:
        return False
