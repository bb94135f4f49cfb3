"""How many gateway workers: `--workers`, else the CPUs the process may use (its affinity, fewer
under a cgroup CPU quota, v2 or v1), at most MAX_AUTO_WORKERS."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_sleep.gateway import GatewayConfig
from vllm_sleep.gateway.config import GatewayConfigError
from vllm_sleep.gateway.main import _as_worker
from vllm_sleep.gateway.workers import (
    MAX_AUTO_WORKERS,
    WorkerRole,
    cgroup_cpu_limit,
    default_workers,
    usable_cpus,
    worker_role,
)


def v2(tmp_path: Path, cpu_max: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu_max + "\n")
    return tmp_path


def v1(tmp_path: Path, quota: int, period: int) -> Path:
    (tmp_path / "cpu").mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
    return tmp_path


def test_cgroup_v2_quota_in_cpus(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(v2(tmp_path, "150000 100000")) == 1.5
    assert cgroup_cpu_limit(v2(tmp_path, "max 100000")) is None


def test_cgroup_v1_quota_in_cpus(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(v1(tmp_path / "a", 250000, 100000)) == 2.5
    assert cgroup_cpu_limit(v1(tmp_path / "b", -1, 100000)) is None


def test_no_cgroup_files_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    assert cgroup_cpu_limit(v2(tmp_path, "garbage")) is None


def test_a_quota_lowers_the_count_rounded_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    assert usable_cpus(v2(tmp_path, "150000 100000")) == 2  # two processes use 1.5 CPUs
    assert usable_cpus(v2(tmp_path, "20000 100000")) == 1  # never 0
    assert usable_cpus(v2(tmp_path, "max 100000")) == 16
    # The affinity bounds a quota above it.
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    assert usable_cpus(v2(tmp_path, "400000 100000")) == 2


def test_the_default_is_capped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(64)))
    assert default_workers(tmp_path) == MAX_AUTO_WORKERS
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {3})
    assert default_workers(tmp_path) == 1


def test_flag_and_refusals() -> None:
    assert GatewayConfig.from_cli([], {}).workers is None  # the default is decided at start
    assert GatewayConfig.from_cli(["--workers", "4"], {}).workers == 4
    for bad in ("0", "65", "-1"):
        with pytest.raises(GatewayConfigError, match="--workers"):
            GatewayConfig.from_cli(["--workers", bad], {})


def test_worker_role_only_from_the_supervisor_environment() -> None:
    assert worker_role({}) is None
    role = worker_role(
        {
            "VLLM_SLEEP_GATEWAY_WORKER": "3",
            "VLLM_SLEEP_GATEWAY_SUPERVISOR": "42",
            "VLLM_SLEEP_GATEWAY_WORKER_LATE": "1",
        }
    )
    assert role is not None and (role.index, role.supervisor, role.late) == (3, 42, True)


def test_each_worker_holds_its_share_of_the_body_budget() -> None:
    # --max-buffered-bytes bounds the whole gateway's memory (the pod's limit), not one worker's.
    mib = 1 << 20
    cfg = GatewayConfig.from_cli(["--workers", "4"], {})
    worker = _as_worker(cfg, WorkerRole(index=0, supervisor=0, late=True))
    assert worker.max_buffered_bytes == cfg.max_buffered_bytes // 4 == 64 * mib
    assert (worker.workers, worker.reuse_port, worker.bind_after_list) == (1, True, True)
    # Never less than one whole body.
    cfg = GatewayConfig.from_cli(["--workers", "16"], {})
    assert _as_worker(cfg, WorkerRole(0, 0, False)).max_buffered_bytes == cfg.max_body_bytes
