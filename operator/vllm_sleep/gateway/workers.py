"""`vllm-sleep gateway --workers N`: N gateway processes on one port, and their supervisor.

A worker is a whole gateway: `vllm-sleep gateway` run again with `WORKER_ENV` set, with its own
ModelDeployment and Pod watches, routing table, hold queues, upstream connections and demand
renewals. Workers share nothing that needs a lock:

- the port: each worker listens with SO_REUSEPORT, and the kernel spreads new connections over
  their sockets by a hash of the connection's addresses (no accept lock, no thundering herd);
- demand: every worker renews the same `<mdep>-demand` Lease under the same holderIdentity,
  so N workers holding requests for one model are still one model's demand;
- metrics: prometheus_client's multiprocess mode (a directory of per-process files, merged on
  every scrape), so whichever worker answers /metrics answers for the whole gateway.

The supervisor (the process started as `vllm-sleep gateway`) binds the port first (a port in
use fails at once; port 0 picks one port for every worker), starts the workers, forwards
SIGTERM/SIGINT to them for their graceful drain, restarts a worker that dies (with backoff),
and exits 1 once workers keep dying. It serves nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..logs import FORMAT, configure
from ..serve import stop_on_signals, until_stopped
from .gateway import SHUTDOWN_GRACE

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

WORKER_ENV = "VLLM_SLEEP_GATEWAY_WORKER"  # the worker's index; set by the supervisor only
SUPERVISOR_ENV = "VLLM_SLEEP_GATEWAY_SUPERVISOR"  # the supervisor's pid
LATE_ENV = "VLLM_SLEEP_GATEWAY_WORKER_LATE"  # "1": a restart, joins the port once listed
METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it at import

MAX_AUTO_WORKERS = 4  # each worker is a whole gateway (~70 MB idle, its own watches)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 8.0  # seconds before a dead worker is started again
STABLE_AFTER = 30.0  # a worker that lived this long starts its next backoff from the first
MAX_DEATHS, DEATH_WINDOW = 5, 60.0  # this many deaths within the window: give up (exit 1)
STOP_MARGIN = 5.0  # past the workers' own shutdown grace, a worker is killed


# -- how many ------------------------------------------------------------------------------------


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (a pod's CPU limit), None without one."""
    try:  # cgroup v2: "<quota> <period>" or "max <period>"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1: a quota of -1 is none
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def usable_cpus(root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may run on (its affinity), fewer under a cgroup CPU quota: a quota of
    1.5 CPUs is 2 (two processes can use all of it, one cannot)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    limit = cgroup_cpu_limit(root)
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def default_workers(root: Path = Path("/sys/fs/cgroup")) -> int:
    if not hasattr(socket, "SO_REUSEPORT"):
        return 1
    return min(usable_cpus(root), MAX_AUTO_WORKERS)


# -- the worker's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRole:
    index: int
    supervisor: int  # pid
    late: bool  # a restarted worker: listen only once its first list is in


def worker_role(env: Mapping[str, str]) -> WorkerRole | None:
    """This process's place among the workers; None when it was not started as one."""
    if WORKER_ENV not in env:
        return None
    return WorkerRole(
        int(env[WORKER_ENV]), int(env.get(SUPERVISOR_ENV, "0")), env.get(LATE_ENV) == "1"
    )


def die_with_supervisor(role: WorkerRole) -> bool:
    """Have the kernel SIGTERM this worker when its supervisor dies (Linux), so a killed
    supervisor never leaves workers serving the port; False if the supervisor is gone."""
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    # Checked after the prctl: a supervisor that died before it would send nothing.
    return role.supervisor == 0 or os.getppid() == role.supervisor


def tag_logs(role: WorkerRole) -> None:
    """Every log line of this worker names it: N workers write to one stream."""
    configure()
    tagged = logging.Formatter(FORMAT.replace("%(name)s", f"%(name)s[worker {role.index}]"))
    for handler in logging.getLogger().handlers:
        handler.setFormatter(tagged)


def merged_registry() -> CollectorRegistry:
    """A registry that collects every worker's metric files (prometheus_client multiprocess)."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


# -- the supervisor ------------------------------------------------------------------------------


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen on) host:port with SO_REUSEPORT, held while the workers run: a port in
    use fails here, and port 0 becomes the one port every worker listens on. A bound socket that
    does not listen takes no connections."""
    family, kind, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except BaseException:
        sock.close()
        raise
    return sock


class Supervisor:
    """Runs `workers` copies of `command` (each told its index, the port and the metrics
    directory through its environment) until SIGTERM/SIGINT, restarting those that die."""

    def __init__(
        self,
        command: Sequence[str],
        workers: int,
        metrics_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        stop_grace: float = SHUTDOWN_GRACE + STOP_MARGIN,
    ) -> None:
        self._command = list(command)
        self._n = workers
        self._metrics_dir = metrics_dir
        self._env = dict(os.environ if env is None else env)
        self._stop_grace = stop_grace
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._deaths: deque[float] = deque()
        self.gave_up = False

    async def run(self) -> int:
        with stop_on_signals() as stop:
            keepers = [
                asyncio.create_task(self._keep(i, stop), name=f"worker {i}") for i in range(self._n)
            ]
            try:
                await stop.wait()
                await asyncio.gather(*keepers)
            finally:
                for task in keepers:
                    task.cancel()
                await self._stop_all()
        return 1 if self.gave_up else 0

    async def _spawn(self, index: int, late: bool) -> asyncio.subprocess.Process:
        env = {
            **self._env,
            WORKER_ENV: str(index),
            SUPERVISOR_ENV: str(os.getpid()),
            METRICS_ENV: str(self._metrics_dir),
        }
        if late:
            env[LATE_ENV] = "1"
        proc = await asyncio.create_subprocess_exec(*self._command, env=env)
        log.info("gateway worker %d started (pid %d)", index, proc.pid)
        return proc

    async def _keep(self, index: int, stop: asyncio.Event) -> None:
        """One worker slot: start, wait, and start again after a death, until `stop`."""
        try:
            await self._keep_one(index, stop)
        except Exception:
            log.exception("gateway worker %d: cannot start it", index)
            self.gave_up = True
            stop.set()

    async def _keep_one(self, index: int, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        late = False
        while not stop.is_set():
            proc = self._procs[index] = await self._spawn(index, late)
            started = loop.time()
            if stop.is_set() or not await _exited_before(proc, stop):
                return  # stopping: _stop_all drains it
            self._mark_dead(proc.pid)
            lived = loop.time() - started
            if self._too_many_deaths(time.monotonic()):
                log.error(
                    "gateway worker %d (pid %d) exited with %s; %d workers died within %.0f s: "
                    "giving up",
                    index,
                    proc.pid,
                    proc.returncode,
                    MAX_DEATHS,
                    DEATH_WINDOW,
                )
                self.gave_up = True
                stop.set()
                return
            failures = 1 if lived >= STABLE_AFTER else failures + 1
            delay = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** (failures - 1))
            log.warning(
                "gateway worker %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                index,
                proc.pid,
                proc.returncode,
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            late = True  # its siblings serve the port while it lists

    def _too_many_deaths(self, now: float) -> bool:
        self._deaths.append(now)
        while self._deaths and self._deaths[0] < now - DEATH_WINDOW:
            self._deaths.popleft()
        return len(self._deaths) >= MAX_DEATHS

    def _mark_dead(self, pid: int) -> None:
        # Its live gauges (held requests) leave the merged view; its counters stay in the sums.
        from prometheus_client import multiprocess

        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]

    async def _stop_all(self) -> None:
        """SIGTERM every worker (each drains: held requests 503, streams get their grace),
        then SIGKILL those still running past the grace."""
        alive = [p for p in self._procs.values() if p.returncode is None]
        for proc in alive:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in alive]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=self._stop_grace)
            for proc in alive:
                if proc.returncode is None:
                    log.warning("gateway worker pid %d did not stop in time: killed", proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for proc in alive:
            self._mark_dead(proc.pid)


async def _exited_before(proc: asyncio.subprocess.Process, stop: asyncio.Event) -> bool:
    """Wait until `proc` exits (True) or `stop` is set (False)."""
    return not (await until_stopped(proc.wait(), stop)).cancelled()


async def supervise(argv: Sequence[str], host: str, port: int, identity: str, workers: int) -> int:
    """Reserve the port, run `workers` gateway workers on it, return the exit code."""
    sock = reserve_port(host, port)
    metrics_dir = Path(tempfile.mkdtemp(prefix="vllm-sleep-gateway-metrics-"))
    try:
        chosen = sock.getsockname()[1]
        # Later flags win (argparse): every worker gets the reserved port and one identity.
        command = [
            sys.executable,
            "-m",
            "vllm_sleep.cli",
            "gateway",
            *argv,
            f"--port={chosen}",
            f"--id={identity}",
            f"--workers={workers}",  # how many share the port (and the memory bounds)
        ]
        log.info("gateway supervisor: %d workers on %s:%d", workers, host, chosen)
        return await Supervisor(command, workers, metrics_dir).run()
    finally:
        sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
