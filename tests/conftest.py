"""Test wiring shared by every suite.

Markers follow folders (tests/unit -> unit, ...). Cluster and e2e tests get a real control plane
from the `kube` fixture, which:
  - uses the cluster in $VLLM_SLEEP_KUBECONFIG when set (any cluster: kind, a dev cluster, ...);
  - reuses the running `vllm-sleep dev` cluster when $KUBECONFIG points at its kubeconfig;
  - otherwise starts its own control plane + sim-kubelet on tmpfs and stops it at the end.
An unrelated $KUBECONFIG is never used on its own: tests create and delete namespaces.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FOLDER_MARKERS = ("unit", "contract", "cluster", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for name in FOLDER_MARKERS:
            if name in parts:
                item.add_marker(getattr(pytest.mark, name))


@dataclass
class Kube:
    kubeconfig: Path
    kubectl_bin: str
    kubelet_admin_url: str | None  # the sim-kubelet's admin API (None on kind)
    own_state_dir: Path | None = None

    @property
    def api_client(self):  # type: ignore[no-untyped-def]
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            input=input,
            timeout=120,
        )


def _start_own(tmp_root: Path) -> tuple[Kube, object]:
    from vllm_sleep.testing.cluster import build
    from vllm_sleep.testing.cluster.simnodes import start_simulated

    bins = build.ensure_all()
    state = start_simulated(
        tmp_root, bins, time_scale=float(os.environ.get("VLLM_SLEEP_TIME_SCALE", "0.02"))
    )
    kube = Kube(
        Path(state.kubeconfig), str(bins["k8s"] / "kubectl"), state.kubelet_admin_url, tmp_root
    )
    return kube, state


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    explicit = os.environ.get("VLLM_SLEEP_KUBECONFIG")
    kubectl = shutil.which("kubectl") or "kubectl"
    if explicit:
        yield Kube(Path(explicit), kubectl, os.environ.get("VLLM_SLEEP_KUBELET_URL"))
        return
    from vllm_sleep.testing.cluster import build, controlplane
    from vllm_sleep.testing.cluster.main import DEFAULT_STATE

    dev = controlplane.ClusterState.load(DEFAULT_STATE)
    if dev and os.environ.get("KUBECONFIG") == dev.kubeconfig and all(dev.alive().values()):
        bins = build.ensure_all()
        yield Kube(Path(dev.kubeconfig), str(bins["k8s"] / "kubectl"), dev.kubelet_admin_url)
        return
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    kube_, state = _start_own(root / f"vso-test-{os.getpid()}")
    try:
        yield kube_
    finally:
        controlplane.stop(state)  # type: ignore[arg-type]
        shutil.rmtree(state.state_dir, ignore_errors=True)  # type: ignore[attr-defined]


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    from kubernetes import client

    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:5]}"
    api = kube.api_client
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name, "labels": {"vllm-sleep.io/test": "true"}}})
    # The ServiceAccount admission plugin rejects pods until KCM made the default account.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException:
            time.sleep(0.2)
    try:
        yield name
    finally:
        try:
            core.delete_namespace(name, propagation_policy="Background")
        except client.ApiException:
            pass
        api.close()
