"""One simulated pod: start its containers, probe them, restart the dead, report status.

A worker per pod, driven by the latest Pod object from the watch. Containers start in kubelet's
order: native sidecars (init containers with restartPolicy Always) first, then plain init
containers, then the main containers. Readiness comes from real HTTP probes against the pod IP
when the container declares them (that is how kubelet learns a vLLM model finished loading).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from . import containers as rt
from .env import resolve_env
from .hostmem import container_memory_limit
from .podstatus import ContainerView, PodView, comparable, compute
from .volumes import PodVolumes

log = logging.getLogger(__name__)
FAST_PROBE_SECONDS = 30.0  # probe every second this long after readiness settles


def probe_delay(
    period: float, ready: bool, ready_for: float, fast_for: float | None = FAST_PROBE_SECONDS
) -> float:
    """Seconds to the next probe: faster than kubelet (at most 1 s) until the container is ready
    and for `fast_for` seconds after, so tests wait less; then the pod's own period (a thousand
    simulated pods probed every second were most of this process's CPU). `fast_for` None: the
    pod's own period throughout, as kubelet probes."""
    if fast_for is None:
        return period
    fast = not ready or ready_for < fast_for
    return min(period, 1.0) if fast else period


StatusWriter = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]
DeviceResolver = Callable[[dict[str, Any]], Awaitable[object | None]]
SecretReader = Callable[[str, str, str], Awaitable[str | None]]


class PodWorker:
    def __init__(
        self,
        pod: dict[str, Any],
        pod_ip: str,
        host: Any,  # EngineHost
        write_status: StatusWriter,
        resolve_device: DeviceResolver,
        read_secret: SecretReader,
        http: aiohttp.ClientSession,
        now: Callable[[], str],
        restart_backoff: float = 1.0,
        status_batch: float = 0.0,
        fast_probe_seconds: float | None = FAST_PROBE_SECONDS,
        pod_dir: Path | None = None,
    ) -> None:
        self.pod = pod
        self.pod_ip = pod_ip
        self._host = host
        self._write = write_status
        self._resolve_device = resolve_device
        self._read_secret = read_secret
        self._http = http
        self._now = now
        self._backoff = restart_backoff
        self._status_batch = status_batch  # seconds of changes gathered into one status write
        self._fast_probe_seconds = fast_probe_seconds
        self._procs: dict[str, rt.Process | None] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_written: dict[str, Any] | None = None
        self._dirty = asyncio.Event()
        spec = pod["spec"]
        self.view = PodView(pod_ip=pod_ip, host_ip="127.0.0.1", start_time=now())
        for c in spec.get("initContainers") or []:
            self.view.init_containers.append(
                ContainerView(
                    c["name"],
                    c.get("image", ""),
                    sidecar=c.get("restartPolicy") == "Always",
                    init=True,
                )
            )
        for c in spec.get("containers") or []:
            self.view.containers.append(ContainerView(c["name"], c.get("image", "")))
        self.engines: dict[str, Any] = {}  # container name -> SimEngine, for the admin API
        self.engine_history: list[Any] = []  # every engine this pod ever ran (restarts included)
        self.device_name: str | None = None  # time-slicing slot when the pod has no DRA claim
        self.exclusive = False  # the slot is a whole `nvidia.com/gpu` (no other exclusive pod)
        # emptyDirs: made before the first container starts, kept across container restarts.
        self.volumes = PodVolumes(pod, pod_dir)

    @property
    def key(self) -> str:
        md = self.pod["metadata"]
        return f"{md['namespace']}/{md['name']}"

    def update(self, pod: dict[str, Any]) -> None:
        """A newer Pod object (e.g. the operator flipped a readiness gate)."""
        self.pod = pod
        self._dirty.set()

    async def run(self) -> None:
        self._tasks.append(asyncio.create_task(self._status_loop()))
        spec = self.pod["spec"]
        self.volumes.create()
        await self.volumes.sync_secrets(self._read_secret)
        device = await self._resolve_device(self.pod)
        for c, view in zip(
            spec.get("initContainers") or [], self.view.init_containers, strict=True
        ):
            if view.sidecar:
                self._tasks.append(asyncio.create_task(self._supervise(c, view, device)))
                await self._wait_started(view)
            else:  # a plain init container: runs to completion (simulated as instant success)
                view.terminated = {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": self._now(),
                    "finishedAt": self._now(),
                }
                self._dirty.set()
        for c, view in zip(spec.get("containers") or [], self.view.containers, strict=True):
            self._tasks.append(asyncio.create_task(self._supervise(c, view, device)))
        self._dirty.set()

    async def _wait_started(self, view: ContainerView) -> None:
        # kubelet starts the next container once a sidecar's startup probe passes (or it runs).
        for _ in range(600):
            if view.running or view.waiting_reason not in (None, "ContainerCreating"):
                return
            await asyncio.sleep(0.05)

    async def _supervise(
        self, c: dict[str, Any], view: ContainerView, device: object | None
    ) -> None:
        name = c["name"]
        while True:
            try:
                proc = await self._start(c, device)
            except rt.UnknownCommand as e:
                view.waiting_reason, view.waiting_message = "RunContainerError", str(e)
                self._dirty.set()
                return
            except Exception as e:  # a crash on start is a container failure, not ours
                log.exception("container %s/%s failed to start", self.key, name)
                view.waiting_reason, view.waiting_message = "CrashLoopBackOff", f"start failed: {e}"
                view.restart_count += 1
                self._dirty.set()
                await asyncio.sleep(self._backoff * min(view.restart_count, 10))
                continue
            self._procs[name] = proc
            view.running, view.started_at, view.waiting_reason = True, self._now(), None
            view.container_id = f"sim://{uuid.uuid4().hex[:12]}"
            self._dirty.set()
            probe = asyncio.create_task(self._probe_loop(c, view))
            await proc.exited().wait()
            probe.cancel()
            view.running = view.ready = False
            view.last_terminated = {
                "exitCode": 1,
                "reason": "Error",
                "startedAt": view.started_at,
                "finishedAt": self._now(),
            }
            failure = proc.failure()
            if failure and c.get("terminationMessagePolicy") == "FallbackToLogsOnError":
                view.last_terminated["message"] = failure[-4096:]  # kubelet's log-tail bound
            view.restart_count += 1
            self._procs[name] = None
            await rt.stop_quietly(proc)
            self._dirty.set()
            policy = self.pod["spec"].get("restartPolicy", "Always")
            if not view.sidecar and policy == "Never":
                return
            view.waiting_reason = "CrashLoopBackOff"
            await asyncio.sleep(self._backoff * min(view.restart_count, 10))

    async def _start(self, c: dict[str, Any], device: object | None) -> rt.Process:
        kind, args = rt.classify(rt.command_line(c))
        mounts = self.volumes.view(c)  # paths under the container's emptyDir mounts
        args = mounts.args(args)
        env = mounts.env(await resolve_env(self.pod, c, self.pod_ip, self._read_secret))
        if kind == "engine":
            proc = await rt.start_engine(
                self._host, args, env, self.pod_ip, device, container_memory_limit(c)
            )
            self.engines[c["name"]] = proc.engine
            self.engine_history.append(proc.engine)
            return proc
        return await rt.start_agent(args, env, self.pod_ip)

    async def _probe_loop(self, c: dict[str, Any], view: ContainerView) -> None:
        startup, readiness = c.get("startupProbe"), c.get("readinessProbe")
        if not startup and not readiness:
            view.ready = True
            self._dirty.set()
            return
        started = startup is None
        settled_at = math.inf  # monotonic: when readiness last settled (True)
        while True:
            probe = readiness if started else startup
            ok = await self._http_probe(c, probe) if probe else True
            if not started and ok:
                started = True
                continue
            if started and ok != view.ready:
                view.ready = ok
                self._dirty.set()
                settled_at = time.monotonic() if ok else math.inf
            period = float((probe or {}).get("periodSeconds", 10))
            ready_for = time.monotonic() - settled_at
            await asyncio.sleep(
                probe_delay(period, view.ready, ready_for, self._fast_probe_seconds)
            )

    async def _http_probe(self, c: dict[str, Any], probe: dict[str, Any]) -> bool:
        get = probe.get("httpGet")
        if not get:
            return True  # exec/tcp probes: a running simulated process passes them
        port = get.get("port")
        if isinstance(port, str) and not port.isdigit():
            port = _named_port(self.pod, port)
        url = f"http://{self.pod_ip}:{port}{get.get('path', '/')}"
        try:
            async with self._http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                return 200 <= resp.status < 400
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _status_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # kubelet sees container changes at its PLEG relist (once a second) and writes the
            # pod's status once for all it found: a pod's start (sidecar, init, main container,
            # startup probe) is a write or two, not one per step.
            if self._status_batch > 0:
                await asyncio.sleep(self._status_batch)
            self._dirty.clear()
            status = compute(self.pod, self.view, self._now())
            if self._last_written is None or comparable(status) != comparable(self._last_written):
                try:
                    await self._write(self.pod, status)
                    self._last_written = status
                except Exception:
                    log.exception("status write for %s failed; retrying", self.key)
                    await asyncio.sleep(0.5)
                    self._dirty.set()

    async def kill(self, container: str) -> bool:
        """The container's process dies at once (as a SIGKILL or an OOM kill): kubelet's
        restart loop then starts it again, counting a restart. False: it is not running."""
        proc = self._procs.get(container)
        if proc is None:
            return False
        await rt.stop_quietly(proc)
        return True

    async def stop(self) -> None:
        """Graceful deletion: main containers first, then sidecars (kubelet's order)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        names = [v.name for v in self.view.containers] + [
            v.name for v in reversed(self.view.init_containers)
        ]
        for name in names:
            await rt.stop_quietly(self._procs.get(name))
        self.volumes.remove()


def _named_port(pod: dict[str, Any], name: str) -> int | None:
    for c in (pod["spec"].get("containers") or []) + (pod["spec"].get("initContainers") or []):
        for p in c.get("ports") or []:
            if p.get("name") == name:
                return int(p["containerPort"])
    return None
