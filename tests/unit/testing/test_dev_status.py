"""`vllm-sleep dev status` shows where each process answers, from what the cluster's state
records: the apiserver URL, the kubeconfig, the control plane's probes, the sim-kubelet's admin
URL and the URLs the demo records for its operator, gateway and node."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_sleep.demo import services
from vllm_sleep.testing.cluster.controlplane import ClusterState
from vllm_sleep.testing.cluster.main import main


def _state(tmp_path: Path) -> ClusterState:
    me = os.getpid()  # alive for the whole test, so status exits 0
    state = ClusterState(
        state_dir=str(tmp_path),
        kubeconfig=str(tmp_path / "admin.kubeconfig"),
        api_url="https://127.0.0.1:40001",
        ports={"etcd": 40002, "apiserver": 40001},
        pids={"etcd": me, "kube-apiserver": me, "sim-kubelet": me},
        kubelet_admin_url="http://127.0.0.1:40003",
        launches={
            "etcd": {"argv": [], "probe": "http://127.0.0.1:40002/health"},
            "kube-apiserver": {"argv": [], "probe": "https://127.0.0.1:40001/readyz"},
            "sim-kubelet": {"argv": [], "probe": "http://127.0.0.1:40003/healthz"},
        },
    )
    state.save()
    return state


def _status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["--state-dir", str(tmp_path), "status"])
    return rc, capsys.readouterr().out


@pytest.fixture(autouse=True)
def _wide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich sizes its table to the terminal


def test_status_shows_the_control_planes_endpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _state(tmp_path)
    rc, out = _status(tmp_path, capsys)
    assert rc == 0
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "http://127.0.0.1:40002" in rows["etcd"]
    assert "https://127.0.0.1:40001" in rows["kube-apiserver"]
    assert "http://127.0.0.1:40003" in rows["sim-kubelet"]
    assert f"kubeconfig:  {tmp_path / 'admin.kubeconfig'}" in out
    assert "apiserver:   https://127.0.0.1:40001" in out
    assert "sim-kubelet: http://127.0.0.1:40003" in out


def test_status_shows_what_the_demo_recorded_and_forgets_it_when_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state(tmp_path)
    services._record(state, services.GATEWAY, os.getpid(), "http://127.0.0.1:40010")
    services._record(state, services.OPERATOR, os.getpid(), "http://127.0.0.1:40011/metrics")
    _, out = _status(tmp_path, capsys)
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│")}
    assert "http://127.0.0.1:40010" in rows[services.GATEWAY]
    assert "http://127.0.0.1:40011/metrics" in rows[services.OPERATOR]

    state.pids[services.GATEWAY] = state.pids[services.OPERATOR] = 2**22 + 1  # no such pid
    services._stop_recorded(state)
    assert services.GATEWAY not in state.endpoints
    rc, out = _status(tmp_path, capsys)
    assert rc == 0
    assert "40010" not in out and "40011" not in out


def test_a_dead_process_still_shows_where_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = _state(tmp_path)
    state.pids["etcd"] = 2**22 + 1  # above pid_max's default ceiling: never a live process
    state.save()
    rc, out = _status(tmp_path, capsys)
    assert rc == 1
    etcd = next(line for line in out.splitlines() if line.startswith("│ etcd"))
    assert "no" in etcd and "http://127.0.0.1:40002" in etcd
