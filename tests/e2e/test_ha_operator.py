"""Two operator replicas with leader election (docs/reliability.md) on the real control plane:
exactly one acts; the leader is SIGKILLed inside a sleep and a wake is asked for while nobody leads;
the standby takes the Lease within leaseDuration + retryPeriod (plus slack), no transition is done
twice, no model is left mid-transition, and the Lease and its Events say who led when.

The session's operator is stopped for the test (it would act too) and started again after it.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from conftest import Kube

from .conftest import Proc, _free_port
from .helpers import apply, events, model_manifest, sim_state, wait_for, wait_phase
from .test_gateway import violations
from .test_operator_restart import SLOW, agent_state, count

LEASE = "ha-leader"
TRANSITIONS = "vllm_sleep_transitions_total"
LEASE_DURATION, RETRY_PERIOD = 15.0, 2.0  # the defaults, which the replicas run with
SLACK = 10.0  # process start-up of nothing: the standby already runs; API latency on a busy host


class Replica:
    """One operator process of the pair, with its own metrics port and pod name."""

    def __init__(self, session: Proc, name: str, namespace: str, logs: Path) -> None:
        self.metrics = f"http://127.0.0.1:{_free_port()}/metrics"
        argv = [
            a
            for a in session.argv
            if not a.startswith(("--metrics-bind=", "--health-bind=", "--namespace="))
        ]
        argv += [
            f"--metrics-bind={self.metrics.removeprefix('http://').removesuffix('/metrics')}",
            f"--health-bind=127.0.0.1:{_free_port()}",
            f"--namespace={namespace}",
            "--leader-elect",
            f"--leader-lease-namespace={namespace}",
            f"--leader-lease-name={LEASE}",
        ]
        self.name = name
        self.proc = Proc(name, argv, {**session.env, "POD_NAME": name}, logs)

    def sample(self, metric: str, **labels: str) -> float:
        """The sum of `metric`'s samples whose labels include `labels`."""
        total = 0.0
        for line in httpx.get(self.metrics, timeout=5).text.splitlines():
            m = re.match(rf"^{metric}(?:\{{(.*)\}})? (\S+)$", line)
            if (
                m
                and labels.items() <= dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or "")).items()
            ):
                total += float(m.group(2))
        return total

    def ready(self) -> bool:
        try:
            return httpx.get(self.metrics, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False


def lease_spec(kube: Kube, namespace: str) -> Any:
    return client.CoordinationV1Api(kube.api_client).read_namespaced_lease(LEASE, namespace).spec


def holder(kube: Kube, namespace: str) -> str | None:
    try:
        return str(lease_spec(kube, namespace).holder_identity or "") or None
    except client.ApiException:
        return None


def wake(kube: Kube, namespace: str, name: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "vllm_sleep.cli", "wake", name, "-n", namespace],
        check=True,
        env={"KUBECONFIG": str(kube.kubeconfig), "PATH": "/usr/bin:/bin"},
        capture_output=True,
    )


def test_the_standby_takes_over_from_a_killed_leader_without_repeating_a_transition(
    kube: Kube,
    namespace: str,
    operator: Proc,
    kubelet_admin: httpx.Client,
    tmp_path: Path,
) -> None:
    operator.stop()
    a = Replica(operator, "op-a", namespace, tmp_path)
    b = Replica(operator, "op-b", namespace, tmp_path)
    try:
        a.proc.start()
        b.proc.start()
        first = wait_for(lambda: holder(kube, namespace), 30, what="a leader")
        leader, standby = (a, b) if first.startswith("op-a_") else (b, a)
        wait_for(standby.ready, 30, what="the standby serves /metrics")
        assert leader.sample("vllm_sleep_operator_leader") == 1
        assert standby.sample("vllm_sleep_operator_leader") == 0

        # "later": pre-warmed by the leader, then asked to wake while no replica leads.
        # "inflight": big weights on a slowed engine make its pre-warm sleep (the first, which
        # pins host memory) take seconds; the leader is killed inside it.
        apply(kube, model_manifest("later", namespace))
        apply(kube, model_manifest("inflight", namespace, **SLOW, sleep={"level": 1}))
        wait_phase(kube, namespace, "later", "Asleep", timeout=120)
        wait_for(
            lambda: agent_state(kube, namespace, "inflight") in ("draining", "sleeping"),
            120,
            interval=0.05,
            what="the pre-warm sleep in flight",
        )
        assert leader.sample(TRANSITIONS, model="later", transition="sleep") == 1
        assert standby.sample(TRANSITIONS) == 0  # exactly one acts
        leader.proc.kill()
        killed = time.monotonic()
        print(
            f"leader SIGKILLed with the inflight agent {agent_state(kube, namespace, 'inflight')}"
        )
        wake(kube, namespace, "later")
        wait_for(
            lambda: (holder(kube, namespace) or "").startswith(f"{standby.name}_"),
            LEASE_DURATION + RETRY_PERIOD + SLACK,
            interval=0.05,
            what="the standby takes the Lease",
        )
        takeover = time.monotonic() - killed
        print(f"takeover after SIGKILL of the leader: {takeover:.2f}s")

        wait_phase(kube, namespace, "inflight", "Asleep", timeout=60)
        wait_phase(kube, namespace, "later", "Awake", timeout=60)
        assert agent_state(kube, namespace, "inflight") == "asleep"
        assert agent_state(kube, namespace, "later") == "awake"
        # Once each, by the engines' own counts: the interrupted sleep was not sent again, and
        # the wake asked for while nobody led happened once.
        moved = sim_state(kube, namespace, "inflight")["transfers"]
        assert (moved["weights_to_host"], moved["kv_releases"], moved["kv_remaps"]) == (1, 1, 0)
        moved = sim_state(kube, namespace, "later")["transfers"]
        assert (moved["kv_releases"], moved["kv_remaps"]) == (1, 1), moved
        assert count(kube, namespace, "later", "Slept") == 1
        assert count(kube, namespace, "later", "Waking") == 1
        assert standby.sample("vllm_sleep_operator_leader") == 1
        assert standby.sample(TRANSITIONS, model="later", transition="wake") == 1
        assert violations(kubelet_admin, namespace) == []

        # A clean stop (SIGTERM, as in a rolling update) releases the Lease: the restarted
        # replica, a new candidate, takes it within a retry period of the release.
        leader.proc.start()
        wait_for(leader.ready, 30, what="the restarted replica serves /metrics")
        stopping = time.monotonic()
        standby.proc.stop()
        assert standby.proc.proc is not None and standby.proc.proc.returncode == 0
        wait_for(
            lambda: (holder(kube, namespace) or "").startswith(f"{leader.name}_"),
            RETRY_PERIOD + SLACK,
            interval=0.05,
            what="the restarted replica takes the released Lease",
        )
        print(f"hand-over after SIGTERM of the leader: {time.monotonic() - stopping:.2f}s")

        spec = lease_spec(kube, namespace)
        assert spec.lease_transitions == 2 and spec.lease_duration_seconds == 15
        said = [e.message for e in events(kube, namespace, LEASE) if e.reason == "LeaderElection"]
        lead, stand = leader.name, standby.name
        assert any(re.fullmatch(rf"{lead}_\w+ became leader", m) for m in said), said
        assert any(
            re.fullmatch(rf"{stand}_\w+ became leader \(took over from {lead}_\w+\)", m)
            for m in said
        ), said
        assert any(
            re.fullmatch(rf"{stand}_\w+ stopped leading and released the Lease", m) for m in said
        )
    finally:
        for r in (a, b):
            r.proc.stop()
            print(f"--- {r.name} log tail ---\n{r.proc.tail(40)}")
        operator.start()
