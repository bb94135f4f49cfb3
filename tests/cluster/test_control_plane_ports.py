"""A control plane whose free-picked port is taken before it binds starts again on fresh ports
(parallel test workers bring clusters up at the same moment on one loopback)."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from conftest import Kube
from vllm_sleep.testing.cluster import build, controlplane, processes

pytestmark = pytest.mark.cluster


def test_a_port_taken_before_the_bind_is_retried_on_fresh_ports(
    kube: Kube, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if kube.kubelet_admin_url is None:
        pytest.skip("external cluster")
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks: list[int] = []

    def pick(host: str = "127.0.0.1") -> int:
        # The first start's scheduler port (its 5th pick) is one another process holds.
        picks.append(taken.getsockname()[1] if len(picks) == 4 else processes.free_port(host))
        return picks[-1]

    monkeypatch.setattr(controlplane, "free_port", pick)
    state_dir = Path("/dev/shm") / f"vso-port-test-{os.getpid()}-{tmp_path.name}"
    try:
        state = controlplane.start(state_dir, build.ensure_all())
        try:
            assert len(picks) == 10  # a second start, on five fresh ports
            assert state.ports["scheduler"] != taken.getsockname()[1]
            assert all(state.alive().values())
        finally:
            controlplane.stop(state)
    finally:
        taken.close()
        shutil.rmtree(state_dir, ignore_errors=True)  # on tmpfs: RAM until removed
