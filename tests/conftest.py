"""Test wiring shared by every suite.

Markers follow folders (tests/unit -> unit, ...). Cluster and e2e tests get a real control plane
from the `kube` fixture, which:
  - uses the cluster in $VLLM_SLEEP_KUBECONFIG when set (any cluster: kind, a dev cluster, ...);
  - reuses the running `vllm-sleep dev` cluster when $KUBECONFIG points at its kubeconfig;
  - otherwise starts its own control plane + sim-kubelet on tmpfs and stops it at the end.
An unrelated $KUBECONFIG is never used on its own: tests create and delete namespaces.

In parallel (`make test` runs `pytest -n auto`, pytest-xdist), each worker is a pytest session of
its own, so each starts its own control plane, operator and gateway the first time it runs a
cluster or e2e test. A cluster given from outside ($VLLM_SLEEP_KUBECONFIG, the dev cluster) would
be shared by every worker, and their operators would fight over it: then every cluster and e2e
test goes to one worker, in order, as in a serial run (`SuiteScheduling`).
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
from typing import Any

import pytest

FOLDER_MARKERS = ("unit", "contract", "cluster", "e2e")
# The order tests run in (serially) and are handed to workers (xdist hands them out in order,
# each worker runs its share in order). cluster before e2e: tests/cluster/test_helm.py runs an
# operator of its own, which must not meet the session's e2e operator on the same cluster.
# The slow e2e tests go before the quick contract and unit tests, so that the quick ones fill
# the other workers at the end instead of the run waiting on one long test.
RUN_ORDER = ("cluster", "e2e", "contract", "unit")
NEEDS_CLUSTER = ("tests/cluster/", "tests/e2e/")
# Workers for `-n auto`. The cluster and e2e tests mostly wait (on the operator, on simulated
# engines at a small time scale), so more workers than cores pay off; each worker starts its own
# control plane (~0.5 GiB of RAM, a few seconds of CPU). PYTEST_XDIST_AUTO_NUM_WORKERS overrides.
AUTO_WORKERS = 4


def _folder(item: pytest.Item) -> str | None:
    parts = Path(str(item.fspath)).parts
    return next((name for name in FOLDER_MARKERS if name in parts), None)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    folders = {id(item): _folder(item) for item in items}
    for item in items:
        folder = folders[id(item)]
        if folder is not None:
            item.add_marker(getattr(pytest.mark, folder))
    rank = {name: i for i, name in enumerate(RUN_ORDER)}
    items.sort(key=lambda item: rank.get(folders[id(item)] or "", len(RUN_ORDER)))  # stable


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: AUTO_WORKERS, whatever the core count (the suite waits more than it computes)."""
    override = os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS")
    return int(override) if override else AUTO_WORKERS


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For `-n` with the default `--dist load`: `SuiteScheduling`. Another --dist is xdist's."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    shared = _given_cluster() is not None

    class SuiteScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Tests are handed out one at a time, in collection order (RUN_ORDER): each worker holds
        one queued beside the one it runs, so a slow e2e test never holds a queue of others back.
        With a given (shared) cluster, every cluster and e2e test is one unit of work: one worker
        runs them all in order, the others the rest. (xdist's `loadgroup` would be the tool, but
        its `xdist_group` marks have no effect with pytest >= 9.2: pytest-xdist issue #1386.)"""

        def _split_scope(self, nodeid: str) -> str:
            return "shared-cluster" if shared and nodeid.startswith(NEEDS_CLUSTER) else nodeid

    return SuiteScheduling(config, log)


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
        # A cache of the cluster's own (kubectl's default, ~/.kube/cache, is keyed by host:port
        # and outlives clusters: a new cluster on an old port would read another's discovery).
        cache = (
            [f"--cache-dir={self.own_state_dir / 'kubectl-cache'}"] if self.own_state_dir else []
        )
        done = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *cache, *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and done.returncode != 0:
            # kubectl's own words, which a bare CalledProcessError would leave out of the report.
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {done.returncode}: "
                f"{done.stderr.strip() or done.stdout.strip()}"
            )
        return done

    def apply_crds(self, folder: Path, timeout: float = 120.0) -> None:
        """Apply the CRDs in `folder` and wait until the apiserver serves both kinds (as the
        demo does: `crds_established`, polled, not `kubectl wait`)."""
        from vllm_sleep.api import names
        from vllm_sleep.demo.kube import crds_established

        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
        plurals = (names.MODEL_DEPLOYMENT_PLURAL, names.GPU_POOL_PLURAL)
        crds = [f"crd/{plural}.{names.GROUP}" for plural in plurals]
        missing = crds_established(self.kubectl, crds, timeout)
        assert missing is None, f"CRDs not served after {timeout:.0f} s: {missing}"


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


def _given_cluster() -> Kube | None:
    """The cluster to test against when one is given ($VLLM_SLEEP_KUBECONFIG, or the running
    dev cluster that $KUBECONFIG names); None when the session starts its own."""
    explicit = os.environ.get("VLLM_SLEEP_KUBECONFIG")
    if explicit:
        kubectl = shutil.which("kubectl") or "kubectl"
        return Kube(Path(explicit), kubectl, os.environ.get("VLLM_SLEEP_KUBELET_URL"))
    from vllm_sleep.testing.cluster import build, controlplane
    from vllm_sleep.testing.cluster.main import DEFAULT_STATE

    dev = controlplane.ClusterState.load(DEFAULT_STATE)
    if dev and os.environ.get("KUBECONFIG") == dev.kubeconfig and all(dev.alive().values()):
        kubectl = str(build.ensure_all()["k8s"] / "kubectl")
        return Kube(Path(dev.kubeconfig), kubectl, dev.kubelet_admin_url)
    return None


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    given = _given_cluster()
    if given is not None:
        yield given
        return
    from vllm_sleep.testing.cluster import controlplane

    # One control plane per session, so one per xdist worker (gw0, gw1, ...).
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    kube_, state = _start_own(root / f"vso-test-{os.getpid()}-{worker}")
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
