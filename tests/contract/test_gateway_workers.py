"""`vllm-sleep gateway --workers N` as real processes: N workers on one port, supervised.

The workers' API server is unreachable (their watches retry), so they serve what a gateway
serves before its first list: /healthz, /metrics, /readyz 503. That is all the supervisor's
contract needs; requests routed and held by several workers are tests/e2e/test_gateway_workers.py.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from contract.test_gateway_start_stop import BlockedSource
from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

pytestmark = pytest.mark.contract

HOST = "127.0.8.140"
T = TypeVar("T")

KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://127.0.0.1:9"}}]
users: [{name: u, user: {token: x}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for(pred: Callable[[], T | None], timeout: float = 90, what: str = "it") -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def children(pid: int) -> set[int]:
    try:
        return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:
        return set()


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Supervised:
    def __init__(self, tmp: Path, workers: int, *extra: str, port: int | None = None) -> None:
        kubeconfig = tmp / "kubeconfig"
        kubeconfig.write_text(KUBECONFIG)
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = tmp / "gateway.log"
        self.last_error = ""
        argv = [
            sys.executable,
            "-m",
            "vllm_sleep.cli",
            "gateway",
            f"--host={HOST}",
            f"--port={self.port}",
            f"--kubeconfig={kubeconfig}",
            f"--workers={workers}",
            *extra,
        ]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)

    def healthz(self) -> int:
        """One request on a new connection (the kernel picks the worker per connection). The
        timeout is a client's, not a latency bound: a worker that was just started may take a
        moment for its first answer on a loaded host, and the claim is that it answers."""
        try:
            return httpx.get(f"{self.url}/healthz", timeout=15).status_code
        except httpx.HTTPError as e:
            self.last_error = f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}"
            return 0

    def per_worker(self) -> dict[str, float]:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        found = re.findall(
            r'^vllm_sleep_gateway_worker_requests_total\{worker="(\d+)"\} (\S+)$', text, re.M
        )
        return {w: float(v) for w, v in found}

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Supervised]:
    gw = Supervised(tmp_path, 2)
    try:
        wait_for(lambda: len(children(gw.proc.pid)) == 2, what="two workers")
        wait_for(lambda: gw.healthz() == 200, what=f"/healthz\n{gw.tail()}")
        yield gw
    finally:
        gw.stop()


def both_answer(gw: Supervised) -> dict[str, float]:
    """Wait until each worker has answered a request: a worker is a child of the supervisor
    before it listens (its imports take seconds on a loaded host). Connections are spread by the
    kernel, so with enough new ones both workers answer."""

    def both_answered() -> dict[str, float] | None:
        for _ in range(8):
            assert gw.healthz() == 200, gw.last_error
        counts = gw.per_worker()
        return counts if len(counts) == 2 and all(v > 0 for v in counts.values()) else None

    return wait_for(both_answered, what=f"both workers answering\n{gw.tail()}")


def test_workers_share_the_port_and_any_worker_answers_metrics_for_all(two: Supervised) -> None:
    counts = both_answer(two)
    assert set(counts) == {"0", "1"}
    # One log stream, each worker's lines named (their watches log the unreachable API).
    wait_for(lambda: "[worker 0]" in two.tail() and "[worker 1]" in two.tail(), what="tags")
    # Before the first list every worker is not ready, whichever answers.
    r = httpx.get(f"{two.url}/readyz", timeout=5)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"


def test_a_killed_worker_is_restarted_while_the_other_serves(two: Supervised) -> None:
    both_answer(two)  # "the other serves" needs it listening before the kill
    first = children(two.proc.pid)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    # Connections queued at the dying worker's socket are reset with it (SO_REUSEPORT; see
    # docs/gateway.md); once it is gone the survivor takes every new one.
    wait_for(lambda: not alive(victim), what="the worker to die")
    replaced = set[int]()

    def restarted() -> bool:
        assert two.healthz() == 200, f"{two.last_error}\n{two.tail()}"
        nonlocal replaced
        replaced = children(two.proc.pid)
        return len(replaced) == 2 and victim not in replaced

    wait_for(restarted, what=f"a new worker\n{two.tail()}")
    assert replaced - first  # a new process took the dead one's place
    assert "restarting" in two.tail()


def test_sigterm_stops_every_worker_and_exits_0(two: Supervised) -> None:
    workers = children(two.proc.pid)
    two.proc.send_signal(signal.SIGTERM)
    assert two.proc.wait(30) == 0, two.tail()
    assert not any(alive(pid) for pid in workers)
    assert two.healthz() == 0  # nobody listens


def test_a_killed_supervisor_takes_its_workers_with_it(two: Supervised) -> None:
    workers = children(two.proc.pid)
    two.proc.kill()
    two.proc.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in workers), 60, what="orphaned workers to end")
    assert two.healthz() == 0


def test_workers_that_keep_dying_make_the_supervisor_exit_1(tmp_path: Path) -> None:
    # A keys file missing at start makes every worker fail as it starts.
    gw = Supervised(tmp_path, 2, f"--api-keys-file={tmp_path / 'missing'}")
    try:
        # Five deaths, each after a whole interpreter start: slow on a loaded host.
        assert gw.proc.wait(240) == 1, gw.tail()
    finally:
        gw.stop()
    assert "giving up" in gw.tail()


def test_one_worker_is_the_process_itself(tmp_path: Path) -> None:
    gw = Supervised(tmp_path, 1)
    try:
        wait_for(lambda: gw.healthz() == 200, what=f"/healthz\n{gw.tail()}")
        assert children(gw.proc.pid) == set()  # no supervisor, no fork
        assert gw.per_worker() == {}  # and no per-worker series
    finally:
        gw.stop()
    assert gw.proc.returncode == 0


async def test_workers_listen_on_one_port_and_a_late_one_only_once_listed() -> None:
    """In-process: two gateways share a port with reuse_port; one started with
    bind_after_list (a restarted worker) takes no connection before its first list."""

    async def readyz(url: str) -> int:
        async with httpx.AsyncClient() as http:  # a new connection: the kernel picks a socket
            return (await http.get(f"{url}/readyz")).status_code

    port = free_port()
    late_source = BlockedSource()
    late_cfg = GatewayConfig(listen_host=HOST, port=port, reuse_port=True, bind_after_list=True)
    late = Gateway(late_cfg, late_source, MemoryDemand())
    cfg = GatewayConfig(listen_host=HOST, port=port, reuse_port=True)
    async with Gateway(cfg, StaticSource("team"), MemoryDemand()) as first:
        starting = asyncio.create_task(late.start())
        await late_source.entered.wait()
        # While the late one lists, every connection reaches the ready one (were the late one
        # listening, the kernel would hand it about half of them: 503 not_ready).
        assert [await readyz(first.url) for _ in range(20)] == [200] * 20
        late_source.release.set()
        await starting
        try:
            assert late.port == port
            assert [await readyz(first.url) for _ in range(20)] == [200] * 20
        finally:
            await late.stop()


def test_a_port_in_use_fails_the_supervisor_at_once(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        gw = Supervised(tmp_path, 2, port=taken.getsockname()[1])
        try:
            assert gw.proc.wait(120) == 1, gw.tail()
        finally:
            gw.stop()
    assert "Address already in use" in gw.tail()
    assert "worker 0 started" not in gw.tail()  # refused before any worker started
