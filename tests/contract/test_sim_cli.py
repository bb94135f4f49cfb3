"""`vllm-sleep sim` standalone, as a process: behaves like `vllm serve`."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

pytestmark = pytest.mark.contract


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "vllm_sleep.cli", "sim", *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_dev_mode_true_is_a_startup_error() -> None:
    p = run(
        ["m", "--host", "127.0.0.1", "--port", str(free_port())], {"VLLM_SERVER_DEV_MODE": "true"}
    )
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "VLLM_SERVER_DEV_MODE='true'" in err


def test_standalone_serve_sleep_wake_and_sigterm() -> None:
    port = free_port()
    p = run(
        [
            "org/m-1B",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--enable-sleep-mode",
            "--time-scale",
            "0.001",
            "--tensor-parallel-size",
            "1",
        ],
        {"VLLM_SERVER_DEV_MODE": "1"},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.1)
        assert httpx.post(f"{base}/sleep?level=1", timeout=30).json() == {
            "status": "sleeping",
            "level": 1,
        }
        assert httpx.get(f"{base}/is_sleeping").json() == {"is_sleeping": True}
        assert httpx.post(f"{base}/wake_up", timeout=30).json()["status"] == "awake"
    finally:
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0
    assert "ignoring vLLM argument '--tensor-parallel-size 1'" in err
