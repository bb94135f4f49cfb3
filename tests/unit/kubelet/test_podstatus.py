"""Pod status as kubelet computes it (the sim-kubelet's pure part), and pod-local addresses."""

from __future__ import annotations

import pytest

from vllm_sleep.testing.kubelet.containers import UnknownCommand, classify, localize_args
from vllm_sleep.testing.kubelet.ips import IPPool, localize, private_twin
from vllm_sleep.testing.kubelet.podstatus import ContainerView, PodView, compute

NOW = "2026-11-25T00:00:00Z"


def pod(gates: list[str] = (), conditions: list[dict[str, str]] = ()) -> dict:  # type: ignore[assignment]
    return {
        "spec": {"readinessGates": [{"conditionType": g} for g in gates]},
        "status": {"conditions": list(conditions)},
    }


def view(ready: bool, sidecar_ready: bool = True) -> PodView:
    v = PodView(pod_ip="127.10.0.2", host_ip="127.0.0.1", start_time=NOW)
    v.init_containers.append(
        ContainerView("agent", "img", sidecar=True, init=True, running=True, ready=sidecar_ready)
    )
    v.containers.append(ContainerView("vllm", "img", running=True, ready=ready))
    return v


def conds(status: dict) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["conditions"]}


def test_ready_needs_every_container_ready() -> None:
    assert conds(compute(pod(), view(ready=False), NOW))["Ready"] == "False"
    assert conds(compute(pod(), view(ready=True, sidecar_ready=False), NOW))["Ready"] == "False"
    assert conds(compute(pod(), view(ready=True), NOW))["Ready"] == "True"


def test_readiness_gate_holds_ready_false_until_true() -> None:
    gated = pod(["vllm-sleep.io/awake"])
    s = compute(gated, view(ready=True), NOW)
    assert conds(s)["ContainersReady"] == "True"
    assert conds(s)["Ready"] == "False"
    assert (
        next(c for c in s["conditions"] if c["type"] == "Ready")["reason"]
        == "ReadinessGatesNotReady"
    )
    opened = pod(["vllm-sleep.io/awake"], [{"type": "vllm-sleep.io/awake", "status": "True"}])
    assert conds(compute(opened, view(ready=True), NOW))["Ready"] == "True"


def test_status_patch_never_mentions_gate_conditions() -> None:
    gated = pod(["vllm-sleep.io/awake"], [{"type": "vllm-sleep.io/awake", "status": "True"}])
    s = compute(gated, view(ready=True), NOW)
    assert "vllm-sleep.io/awake" not in conds(s)  # a merge patch by type leaves it alone


def test_phase_and_ips() -> None:
    s = compute(pod(), view(ready=True), NOW)
    assert s["phase"] == "Running" and s["podIP"] == "127.10.0.2"
    assert s["initContainerStatuses"][0]["name"] == "agent"


def test_pod_ips_are_unique_loopback_and_twins_are_private() -> None:
    pool = IPPool()
    ips = {pool.allocate(f"uid-{i}") for i in range(600)}
    assert len(ips) == 600
    assert all(ip.startswith("127.10.") for ip in ips)
    twins = {private_twin(ip) for ip in ips}
    assert twins.isdisjoint(ips) and all(t.startswith("127.11.") for t in twins)
    assert localize("127.0.0.1", "127.10.0.5") == "127.11.0.5"
    assert localize("0.0.0.0", "127.10.0.5") == "127.10.0.5"


def test_released_ips_are_reused_last() -> None:
    pool = IPPool()
    first = pool.allocate("a")
    pool.release("a")
    assert pool.allocate("b") != first


def test_container_commands() -> None:
    assert classify(["vllm", "serve", "m", "--port", "8001"]) == ("engine", ["m", "--port", "8001"])
    assert classify(["/usr/local/bin/vllm-sleep", "agent", "--x"]) == ("agent", ["--x"])
    assert (
        classify(["python3", "-m", "vllm.entrypoints.openai.api_server", "--model", "m"])[0]
        == "engine"
    )
    with pytest.raises(UnknownCommand):
        classify(["sleep", "inf"])


def test_localize_args_rewrites_hosts_and_urls() -> None:
    out = localize_args(
        ["--host", "127.0.0.1", "--upstream=http://127.0.0.1:8001", "--listen-host=0.0.0.0"],
        "127.10.0.9",
    )
    assert out == [
        "--host",
        "127.11.0.9",
        "--upstream=http://127.11.0.9:8001",
        "--listen-host=127.10.0.9",
    ]


def test_addresses_taken_on_the_host_are_skipped() -> None:
    taken = {"127.10.0.2", "127.10.0.3"}
    pool = IPPool(probe=lambda ip: ip not in taken)
    assert pool.allocate("a") == "127.10.0.4"
    assert pool.allocate("b") == "127.10.0.5"
    taken.clear()
    assert pool.allocate("c") == "127.10.0.2"


def test_pools_with_different_starts_hand_out_different_addresses() -> None:
    # Two local clusters (each with its own sim-kubelet) share the host's loopback.
    a, b = IPPool(size=1000, start=0), IPPool(size=1000, start=500)
    ips_a = {a.allocate(f"a-{i}") for i in range(100)}
    ips_b = {b.allocate(f"b-{i}") for i in range(100)}
    assert ips_a.isdisjoint(ips_b)
    wrapped = IPPool(size=10, start=9)
    assert [wrapped.allocate(str(i)) for i in range(10)][:2] == ["127.10.0.11", "127.10.0.2"]
