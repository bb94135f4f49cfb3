"""Install the CRDs and RBAC, and run the operator and the gateway as background processes.

Each process gets a kubeconfig holding only a token of its own ServiceAccount (from
deploy/base/rbac.yaml), so the demo shows the least-privilege RBAC working, not admin. Their pids
go into the cluster's state.json, so `vllm-sleep dev down` stops them with the cluster; the
gateway's URL and the token's age go into demo.json beside it, so a second demo run reuses them.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from ..api.names import GPU_POOL_PLURAL, GROUP, MODEL_DEPLOYMENT_PLURAL
from ..testing.cluster.controlplane import ClusterState
from ..testing.cluster.processes import free_port, log_tail, pid_alive, spawn, stop_pids
from ..testing.cluster.tokens import kubeconfig_with_token
from .kube import Cluster, DemoError, crds_established

ROOT = Path(__file__).resolve().parents[3]  # the checkout: crds/ and deploy/ live there
SYSTEM_NAMESPACE = "vllm-sleep-system"
STATE_FILE = "demo.json"
TOKEN_HOURS = 168
# Restart (with fresh tokens) well before the tokens expire under a long-lived dev cluster.
TOKEN_REFRESH_SECONDS = (TOKEN_HOURS - 24) * 3600
OPERATOR, GATEWAY = "operator", "gateway"


@dataclass
class DemoState:
    gateway_url: str
    operator_pid: int
    gateway_pid: int
    token_created: float
    operator_metrics_url: str = ""  # absent from the files of older demos

    @classmethod
    def load(cls, state_dir: Path) -> DemoState | None:
        try:
            return cls(**json.loads((state_dir / STATE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, state_dir: Path) -> None:
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass
class Services:
    gateway_url: str
    operator_log: Path
    gateway_log: Path
    reused: bool
    operator_metrics_url: str = ""


def manifest_paths() -> list[Path]:
    paths = [
        ROOT / "crds",
        ROOT / "deploy" / "base" / "namespace.yaml",
        ROOT / "deploy" / "base" / "rbac.yaml",
    ]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise DemoError(f"run the demo from a checkout of the project; missing: {missing}")
    return paths


def install(cluster: Cluster) -> list[str]:
    """What `kubectl apply` a user would run; returns the commands, for the screen."""
    crds, namespace, rbac = manifest_paths()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crds))
    plurals = (MODEL_DEPLOYMENT_PLURAL, GPU_POOL_PLURAL)
    missing = crds_established(cluster.kubectl, [f"crd/{p}.{GROUP}" for p in plurals])
    if missing is not None:
        raise DemoError(f"the CRDs were applied but are not served: {missing}")
    cluster.kubectl("apply", "-f", str(namespace))
    cluster.kubectl("apply", "-f", str(rbac))
    rel = [p.relative_to(ROOT) for p in (crds, namespace, rbac)]
    return [
        f"kubectl apply --server-side --force-conflicts -f {rel[0]}",
        *(f"kubectl apply -f {p}" for p in rel[1:]),
    ]


def service_account_kubeconfig(cluster: Cluster, sa: str, path: Path) -> Path:
    """The admin kubeconfig with its user swapped for a token of `sa`."""
    token = cluster.kubectl(
        "create", "token", sa, "-n", SYSTEM_NAMESPACE, f"--duration={TOKEN_HOURS}h"
    ).stdout.strip()
    return kubeconfig_with_token(cluster.kubeconfig, sa, token, path)


def ensure(
    state: ClusterState, cluster: Cluster, log: Callable[[str], None], *, restart: bool = False
) -> Services:
    state_dir = Path(state.state_dir)
    logs = state.logs
    paths = (logs / f"{OPERATOR}.log", logs / f"{GATEWAY}.log")
    previous = DemoState.load(state_dir)
    if previous and not restart and _reusable(previous, state):
        return Services(
            previous.gateway_url,
            *paths,
            reused=True,
            operator_metrics_url=previous.operator_metrics_url,
        )
    # Stop leftovers of an earlier run (one of the two died, or tokens are old) before starting
    # fresh: two operators on one cluster would both act on every model.
    _stop_recorded(state)
    operator_cfg = service_account_kubeconfig(
        cluster, "vllm-sleep-operator", state_dir / "operator.kubeconfig"
    )
    gateway_cfg = service_account_kubeconfig(
        cluster, "vllm-sleep-gateway", state_dir / "gateway.kubeconfig"
    )
    token_created = time.time()
    health = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    operator = spawn(
        OPERATOR,
        [
            sys.executable,
            "-m",
            "vllm_sleep.cli",
            "operator",
            f"--metrics-bind={metrics}",
            f"--health-bind={health}",
            "--resync-seconds=5",
        ],
        logs,
        env={"KUBECONFIG": str(operator_cfg), "PYTHONUNBUFFERED": "1"},
    )
    _record(state, OPERATOR, operator.pid, f"http://{metrics}/metrics")
    port = free_port()
    gateway = spawn(
        GATEWAY,
        [
            sys.executable,
            "-m",
            "vllm_sleep.cli",
            "gateway",
            "--host=127.0.0.1",
            f"--port={port}",
            f"--kubeconfig={gateway_cfg}",
            # Renew demand every second while requests are held, not every 10 s: a lost
            # renewal would otherwise stall the demo's first request visibly.
            "--demand-interval=1",
        ],
        logs,
        env={"PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    _record(state, GATEWAY, gateway.pid, url)
    _wait_http(OPERATOR, operator.pid, f"http://{health}/healthz", paths[0])
    _wait_http(GATEWAY, gateway.pid, f"{url}/readyz", paths[1])
    metrics_url = f"http://{metrics}"
    DemoState(url, operator.pid, gateway.pid, token_created, metrics_url).save(state_dir)
    log(f"operator pid {operator.pid}, gateway pid {gateway.pid} (logs in {logs})")
    return Services(url, *paths, reused=False, operator_metrics_url=metrics_url)


def _reusable(previous: DemoState, state: ClusterState) -> bool:
    return (
        state.pids.get(OPERATOR) == previous.operator_pid
        and state.pids.get(GATEWAY) == previous.gateway_pid
        and pid_alive(previous.operator_pid)
        and pid_alive(previous.gateway_pid)
        and time.time() - previous.token_created < TOKEN_REFRESH_SECONDS
    )


def _stop_recorded(state: ClusterState) -> None:
    pids = [state.pids.pop(name) for name in (GATEWAY, OPERATOR) if name in state.pids]
    for name in (GATEWAY, OPERATOR):
        state.endpoints.pop(name, None)
    stop_pids([p for p in pids if pid_alive(p)])
    state.save()


def _record(state: ClusterState, name: str, pid: int, url: str) -> None:
    # Recorded before waiting for readiness, so `dev down` also stops a process that hangs.
    state.pids[name] = pid
    state.endpoints[name] = url
    state.save()


def _wait_http(name: str, pid: int, url: str, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise DemoError(
                f"the {name} exited during startup; last log lines ({log}):\n{log_tail(log)}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise DemoError(
        f"the {name} is not ready after {timeout:.0f}s; last log lines ({log}):\n{log_tail(log)}"
    )
