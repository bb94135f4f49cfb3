"""E2E wiring: CRDs applied from crds/, the operator (and gateway) as real processes.

Everything goes through public interfaces: YAML into the apiserver, HTTP to pods and the
gateway. The operator runs as a separate process with its own kubeconfig, exactly as
`vllm-sleep operator` would run in a pod.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import Kube

ROOT = Path(__file__).resolve().parents[2]
# The processes' logs a failed test's report carries (their lines written during the test):
# the project's processes (operator, gateway, test replicas) and the sim-kubelet, whose state dir
# (and so its log) is gone once the session ends. The control plane's own logs are left out.
REPORTED_LOGS = ("*.log",)
CLUSTER_LOGS = ("sim-kubelet*.log",)
REPORT_LINES = 120


@pytest.fixture(scope="session")
def crds(kube: Kube) -> None:
    kube.apply_crds(ROOT / "crds")


class Proc:
    """A project process (operator, gateway) with its log, restartable for crash tests."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, as in a node failure or OOM kill."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_account_kubeconfig(kube: Kube, sa: str, path: Path) -> Path:
    """A kubeconfig holding only a token of `sa` (installed from deploy/base/rbac.yaml), so the
    process runs with exactly the RBAC the chart and deploy/ grant, never as admin."""
    from vllm_sleep.testing.cluster.tokens import kubeconfig_with_token

    kube.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / "namespace.yaml"))
    kube.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / "rbac.yaml"))
    token = kube.kubectl(
        "create", "token", sa, "-n", "vllm-sleep-system", "--duration=6h"
    ).stdout.strip()
    return kubeconfig_with_token(kube.kubeconfig, sa, token, path)


@pytest.fixture(scope="session")
def operator(kube: Kube, crds: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    logs = tmp_path_factory.mktemp("operator")
    kubeconfig = service_account_kubeconfig(kube, "vllm-sleep-operator", logs / "kubeconfig")
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "vllm_sleep.cli",
        "operator",
        f"--metrics-bind=127.0.0.1:{_free_port()}",
        f"--health-bind=127.0.0.1:{_free_port()}",
        "--resync-seconds=5",
    ]
    proc = Proc("operator", argv, env, logs)
    proc.start()
    time.sleep(1.0)
    assert proc.proc is not None and proc.proc.poll() is None, proc.tail()
    yield proc
    proc.stop()
    print(f"--- operator log tail ---\n{proc.tail(200)}")


@pytest.fixture
def kubelet_admin(kube: Kube) -> httpx.Client:
    if not kube.kubelet_admin_url:
        pytest.skip("needs the sim-kubelet's admin API (local control plane)")
    return httpx.Client(base_url=kube.kubelet_admin_url, timeout=10)


class GatewayProc(Proc):
    """A gateway process on a fixed port (kept across restarts); `url` is its base URL."""

    def __init__(self, argv: list[str], env: dict[str, str], log_dir: Path, url: str) -> None:
        super().__init__("gateway", argv, env, log_dir)
        self.url = url

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.tail()
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gateway not ready:\n{self.tail()}")


def start_gateway(kube: Kube, logs: Path, workers: int = 1) -> GatewayProc:
    """Start a gateway with its ServiceAccount's RBAC and wait until it listed everything.
    One worker process unless asked (hold-queue bounds are per process)."""
    kubeconfig = service_account_kubeconfig(kube, "vllm-sleep-gateway", logs / "kubeconfig")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable,
        "-m",
        "vllm_sleep.cli",
        "gateway",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--kubeconfig={kubeconfig}",
        "--demand-interval=1",
        f"--workers={workers}",
    ]
    proc = GatewayProc(argv, env, logs, f"http://127.0.0.1:{port}")
    proc.start()
    proc.wait_ready()
    return proc


@pytest.fixture(scope="session")
def gateway(
    kube: Kube, crds: None, operator: Proc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway as a process with its ServiceAccount's RBAC; yields its base URL."""
    proc = start_gateway(kube, tmp_path_factory.mktemp("gateway"))
    yield proc.url
    proc.stop()
    print(f"--- gateway log tail ---\n{proc.tail(100)}")


def _log_files(kube: Kube | None, basetemp: Path) -> list[Path]:
    files = [f for pattern in REPORTED_LOGS for f in basetemp.rglob(pattern)]
    if kube is not None and kube.own_state_dir is not None:
        logs = kube.own_state_dir / "logs"
        files += [f for pattern in CLUSTER_LOGS for f in logs.glob(pattern)]
    return sorted(set(files))


@pytest.fixture(autouse=True)
def _log_offsets(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Where each log ended when the test began, so a failure reports only its own lines."""
    kube = request.getfixturevalue("kube") if "kube" in request.fixturenames else None
    basetemp = tmp_path_factory.getbasetemp()
    request.node.stash[_OFFSETS] = (
        kube,
        basetemp,
        {f: f.stat().st_size for f in _log_files(kube, basetemp)},
    )


_OFFSETS = pytest.StashKey[tuple[Any, Path, dict[Path, int]]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and _OFFSETS in item.stash:
        kube, basetemp, offsets = item.stash[_OFFSETS]
        for f in _log_files(kube, basetemp):
            try:
                with f.open("rb") as fh:
                    fh.seek(offsets.get(f, 0))
                    lines = fh.read().decode(errors="replace").splitlines()
            except OSError:
                continue
            if lines:
                shown = "\n".join(lines[-REPORT_LINES:])
                report.sections.append((f"{f.relative_to(f.parents[1])} (during the test)", shown))
    return report
