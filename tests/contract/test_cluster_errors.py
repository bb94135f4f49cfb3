"""The local control plane's failures say what happened and what to do (no cluster needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vllm_sleep.testing.cluster import gotool
from vllm_sleep.testing.cluster.processes import (
    ClusterError,
    spawn,
    wait_ready,
)


def test_missing_go_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(gotool.GoError, match="Go is not installed"):
        gotool.go_env("GOVERSION")


def test_a_binary_that_crashes_at_start_shows_its_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; print('bind: address already in use'); sys.exit(3)"]
    proc = spawn("kube-apiserver", argv, tmp_path)
    with pytest.raises(ClusterError) as err:
        wait_ready("kube-apiserver", proc, lambda: False, tmp_path, timeout=10)
    assert "exited with code 3" in str(err.value)
    assert "address already in use" in str(err.value)


def test_a_component_that_never_gets_ready_times_out_with_its_log(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('waiting for etcd'); time.sleep(30)"]
    proc = spawn("etcd", argv, tmp_path)
    try:
        with pytest.raises(ClusterError, match="not ready after 1s"):
            wait_ready("etcd", proc, lambda: False, tmp_path, timeout=1)
    finally:
        proc.kill()
        proc.wait()
    assert "waiting for etcd" in (tmp_path / "etcd.log").read_text()


def test_dev_cli_reports_a_missing_cluster(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vllm_sleep.cli",
            "dev",
            "--state-dir",
            str(tmp_path / "none"),
            "env",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "vllm-sleep dev up" in out.stderr


def test_a_failed_go_build_raises_with_the_output_tail(tmp_path: Path) -> None:
    from vllm_sleep.testing.cluster import build

    (tmp_path / "go.mod").write_text("module broken\n\ngo 1.26.0\n")
    (tmp_path / "main.go").write_text("package main\n\nfunc main() { undefinedThing() }\n")
    with pytest.raises(build.BuildError) as err:
        build._run_go(
            ["build", "-o", str(tmp_path / "out"), "."], tmp_path, lambda _s: None, "broken"
        )
    assert "undefinedThing" in str(err.value)
    assert "exit 1" in str(err.value)
