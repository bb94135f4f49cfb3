"""A real Kubernetes control plane as local processes: etcd, apiserver, controller-manager, scheduler.

All on free 127.0.0.1 ports, state on tmpfs, RBAC on, token authentication. What is deliberately
absent: kubelet (the sim-kubelet plays it for simulated GPU nodes), kube-proxy, and the endpoint
controllers (pods have 127.x IPs, which the apiserver refuses in EndpointSlices; nothing in this
project routes through them — see docs/local-cluster.md).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import pki
from .processes import (
    ClusterError,
    free_port,
    http_ok,
    pid_alive,
    reap,
    spawn,
    stop_pids,
    wait_ready,
)

STATE_FILE = "state.json"
SERVICE_CIDR = "10.96.0.0/16"  # never dialled: there is no kube-proxy; pods are found by watch


@dataclass
class ClusterState:
    """What a running cluster is, persisted so `dev status/down` and tests can find it."""

    state_dir: str
    kubeconfig: str
    api_url: str
    ports: dict[str, int]
    pids: dict[str, int] = field(default_factory=dict)  # start order
    kubelet_admin_url: str | None = None
    # How each process was started and is probed, so `restart` can start it again: name ->
    # {"argv": [...], "probe": url, "token": bearer or None, "expect": text or None}.
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Where processes started beside the cluster (the demo's operator, gateway and node) answer:
    # name -> URL, for `dev status`. The control plane's own are its launches' probes.
    endpoints: dict[str, str] = field(default_factory=dict)

    def save(self) -> None:
        Path(self.state_dir, STATE_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, state_dir: Path) -> ClusterState | None:
        path = state_dir / STATE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def alive(self) -> dict[str, bool]:
        return {name: pid_alive(pid) for name, pid in self.pids.items()}

    @property
    def logs(self) -> Path:
        return Path(self.state_dir) / "logs"


START_ATTEMPTS = 3


def start(state_dir: Path, bins: dict[str, Path], timeout: float = 180.0) -> ClusterState:
    """Start etcd, apiserver, KCM and scheduler; return once all are ready.

    Ports are picked free (bound to 0, then released), so another process on this host (another
    test worker's cluster coming up at the same moment) can take one before ours binds it: a
    start that fails with "address already in use" starts again from scratch on fresh ports."""
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            return _start(state_dir, bins, timeout)
        except ClusterError as e:
            if "address already in use" not in str(e) or attempt == START_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def _start(state_dir: Path, bins: dict[str, Path], timeout: float) -> ClusterState:
    if state_dir.exists():
        shutil.rmtree(state_dir)
    (state_dir / "pki").mkdir(parents=True)
    logs = state_dir / "logs"
    ports = {n: free_port() for n in ("etcd", "etcd_peer", "apiserver", "kcm", "scheduler")}
    sa_key, sa_pub = pki.write_service_account_keys(state_dir)
    ids = {i.name: i for i in pki.identities()}
    tokens = pki.write_token_file(state_dir, list(ids.values()))
    api_url = f"https://127.0.0.1:{ports['apiserver']}"
    ca = state_dir / "pki" / "apiserver.crt"
    kubeconfigs = {
        name: pki.write_kubeconfig(state_dir / f"{name}.kubeconfig", api_url, ca, ident)
        for name, ident in ids.items()
    }
    state = ClusterState(
        state_dir=str(state_dir),
        kubeconfig=str(kubeconfigs["admin"]),
        api_url=api_url,
        ports=ports,
    )
    k8s, etcd_bin = bins["k8s"], bins["etcd"]

    def launch(
        name: str,
        argv: list[str],
        probe_url: str,
        token: str | None = None,
        expect: bytes | None = None,
    ) -> None:
        proc = spawn(name, argv, logs)
        state.pids[name] = proc.pid
        state.launches[name] = {
            "argv": argv,
            "probe": probe_url,
            "token": token,
            "expect": expect.decode() if expect is not None else None,
        }
        state.save()  # record pids before waiting, so `down` can clean up a failed start
        try:
            wait_ready(name, proc, http_ok(probe_url, token, expect), logs, timeout)
        except ClusterError:
            stop(state)
            raise

    etcd_url = f"http://127.0.0.1:{ports['etcd']}"
    peer_url = f"http://127.0.0.1:{ports['etcd_peer']}"
    launch(
        "etcd",
        [
            str(etcd_bin / "etcd"),
            "--name=vso",
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=vso={peer_url}",
            "--unsafe-no-fsync",
            "--log-level=warn",
            "--listen-metrics-urls=",
            "--quota-backend-bytes=4294967296",
        ],
        f"{etcd_url}/health",
        expect=b'"health":"true"',
    )
    launch(
        "kube-apiserver",
        [
            str(k8s / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            "--advertise-address=127.0.0.1",
            f"--cert-dir={state_dir / 'pki'}",
            f"--token-auth-file={tokens}",
            "--authorization-mode=Node,RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}",
            f"--service-account-signing-key-file={sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # /debug/pprof on for a bench that profiles the apiserver (bench/scale_bench.py).
            f"--profiling={str(bool(os.environ.get('VLLM_SLEEP_APISERVER_PROFILING'))).lower()}",
            "--v=1",
        ],
        f"{api_url}/readyz",
        token=ids["admin"].token,
    )
    common = [
        "--bind-address=127.0.0.1",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]
    kcm_cfg = str(kubeconfigs["kcm"])
    launch(
        "kube-controller-manager",
        [
            str(k8s / "kube-controller-manager"),
            f"--kubeconfig={kcm_cfg}",
            f"--authentication-kubeconfig={kcm_cfg}",
            f"--authorization-kubeconfig={kcm_cfg}",
            f"--secure-port={ports['kcm']}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa_key}",
            f"--root-ca-file={ca}",
            # Loopback pod IPs cannot be published in EndpointSlices; turn those controllers off.
            "--controllers=*,-endpoints-controller,-endpointslice-controller,"
            "-endpointslice-mirroring-controller",
            *common,
        ],
        f"https://127.0.0.1:{ports['kcm']}/healthz",
    )
    sched_cfg = str(kubeconfigs["scheduler"])
    launch(
        "kube-scheduler",
        [
            str(k8s / "kube-scheduler"),
            f"--kubeconfig={sched_cfg}",
            f"--authentication-kubeconfig={sched_cfg}",
            f"--authorization-kubeconfig={sched_cfg}",
            f"--secure-port={ports['scheduler']}",
            *common,
        ],
        f"https://127.0.0.1:{ports['scheduler']}/readyz",
    )
    state.save()
    return state


def restart(state: ClusterState, name: str, timeout: float = 120.0, *, crash: bool = True) -> float:
    """Stop one process of the cluster (SIGKILL when `crash`, as a node or OOM kill would; else
    SIGTERM) and start it again with the same command line and data; returns once its probe
    passes again, with the seconds that took. etcd keeps its data directory, so a restarted
    etcd (or an apiserver reconnecting to it) resumes where it was."""
    launch = state.launches.get(name)
    if launch is None:
        raise ClusterError(f"{name} was not started by this control plane; cannot restart it")
    started = time.monotonic()
    old = state.pids.get(name)
    if old is not None and crash:
        try:
            os.killpg(old, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while pid_alive(old) and time.monotonic() < deadline:
            reap(old)
            time.sleep(0.05)
    elif old is not None:
        stop_pids([old])
    expect = launch.get("expect")
    probe = http_ok(launch["probe"], launch.get("token"), expect.encode() if expect else None)
    deadline = time.monotonic() + timeout
    while True:
        proc = spawn(name, list(launch["argv"]), state.logs)
        state.pids[name] = proc.pid
        state.save()
        try:
            wait_ready(name, proc, probe, state.logs, max(1.0, deadline - time.monotonic()))
        except ClusterError as e:
            # Its port was free-picked from the ephemeral range: while it was down, a client's
            # outgoing connection may have been given that port as its own. Wait until it closes.
            if "address already in use" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(1.0)
            continue
        return time.monotonic() - started


def stop(state: ClusterState) -> None:
    """Stop everything, newest first (the apiserver drains badly once etcd is gone)."""
    # A process restarted meanwhile (`restart`, maybe by another holder of this cluster) has a
    # new pid: the saved state knows it.
    saved = ClusterState.load(Path(state.state_dir))
    if saved is not None:
        state.pids = {**state.pids, **saved.pids}
    stop_pids(list(reversed(state.pids.values())))
    left = [n for n, alive in state.alive().items() if alive]
    if left:
        print(f"warning: still running after SIGKILL: {left}", file=sys.stderr)
