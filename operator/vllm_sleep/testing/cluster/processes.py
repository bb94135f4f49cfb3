"""Start, watch and stop the control plane's processes, with useful errors.

Every process runs in its own session (so a Ctrl-C in the caller's terminal does not take the
cluster down half-way) with its output in a log file; failures quote that log's tail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path


class ClusterError(RuntimeError):
    pass


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def spawn(
    name: str, argv: list[str], logs: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    logs.mkdir(parents=True, exist_ok=True)
    log = (logs / f"{name}.log").open("ab")
    return subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )


def wait_ready(
    name: str,
    proc: subprocess.Popen[bytes],
    probe: Callable[[], bool],
    logs: Path,
    timeout: float = 120.0,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(
                f"{name} exited with code {proc.returncode} during startup; last log lines "
                f"({logs / (name + '.log')}):\n{log_tail(logs / f'{name}.log')}"
            )
        with contextlib.suppress(Exception):
            if probe():
                return
        time.sleep(0.25)
    raise ClusterError(
        f"{name} not ready after {timeout:.0f}s; last log lines:\n{log_tail(logs / f'{name}.log')}"
    )


def http_ok(url: str, token: str | None = None, expect: bytes | None = None) -> Callable[[], bool]:
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE  # readiness only: the cert is self-signed at startup

    def probe() -> bool:
        req = urllib.request.Request(url)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=insecure) as resp:
                body: bytes = resp.read()
                return resp.status == 200 and (expect is None or expect in body)
        except (urllib.error.URLError, OSError):
            return False

    return probe


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def stop_pids(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM each (in the given order), then SIGKILL whatever is left after `grace`."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for pid in pids:
        while pid_alive(pid) and time.monotonic() < deadline:
            reap(pid)
            time.sleep(0.1)
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            reap(pid)
            if not pid_alive(pid):
                break
            time.sleep(0.05)


def reap(pid: int) -> None:
    """Collect an exited child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
