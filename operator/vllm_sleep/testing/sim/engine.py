"""One simulated `vllm serve` process: lifecycle (load, profile, die, stop) and memory layout.

The sleep/wake/pause operations live in ops.py; HTTP in the routes_* modules. State that other
modules read is plain attributes, kept consistent by the methods here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from .clock import Clock
from .config import SimConfig
from .memory import GPUDevice, HostMemory
from .metrics_state import EngineMetrics
from .scheduler import EngineDead, Scheduler, SimRequest
from .startup import load
from .violations import Violation, ViolationKind

log = logging.getLogger(__name__)

EngineState = Literal["loading", "awake", "sleeping", "dead", "failed"]
MemTag = Literal["weights", "kv_cache"]
MEM_TAGS: tuple[MemTag, ...] = ("weights", "kv_cache")


class SimEngine:
    def __init__(
        self, cfg: SimConfig, device: GPUDevice, host_memory: HostMemory, clock: Clock
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.host_memory = host_memory
        self.clock = clock.child(cfg.time_scale)
        self.name = f"{cfg.served_names[0]}@{cfg.host or '0.0.0.0'}:{cfg.port}"
        self.sched = Scheduler(cfg.max_num_seqs)
        self.metrics = EngineMetrics()
        self.violations: list[Violation] = []
        self.dead = asyncio.Event()  # the process exited (crash, startup failure, stop)
        self.ready = asyncio.Event()  # the HTTP server answers (load finished, or it never will)
        self.phase: Literal["loading", "running", "dead", "failed"] = "loading"
        self.asleep_tags: set[MemTag] = set()
        self.weights_discarded = False  # level 2 dropped them; only reload_weights fixes that
        self.offloaded = False  # weights sit in pinned host memory (level 1)
        self.pinned_ready = False  # pinned buffers cached after the first level-1 sleep
        self.sleep_gauge: str | None = "awake"  # None: awake=weights_offloaded=discard_all=0
        self.transition: str | None = None  # "startup" | "sleep" | "wake" | "reload" | ...
        self.utility_lock = asyncio.Lock()  # vLLM runs utility calls one at a time
        self.server_load = 0
        self.bound_port: int | None = None
        self.close_server: Callable[[], Awaitable[None]] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why startup failed
        self._close_task: asyncio.Task[None] | None = None
        share = int(device.total_bytes * cfg.gpu_memory_utilization)
        self.share = share
        self.residual = min(cfg.residual, share)
        self.weights_dev = min(cfg.weights_bytes, share - self.residual)
        self.kv_dev = share - self.residual - self.weights_dev

    # --- what the outside sees -------------------------------------------------------------
    def __repr__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        """Where to dial this engine (an all-interfaces bind is dialled on 127.0.0.1)."""
        host = self.cfg.host if self.cfg.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.bound_port or self.cfg.port}"

    async def wait_loaded(self) -> EngineState:
        """Until the load finished ("awake") or startup failed ("failed")."""
        await self.ready.wait()
        return self.state

    @property
    def state(self) -> EngineState:
        if self.phase != "running":
            return self.phase
        return "sleeping" if self.asleep_tags or self.sched.sleep_pause else "awake"

    @property
    def is_sleeping(self) -> bool:
        """vLLM 0.33: scheduler paused (sleep at any level or /pause) or any memory tag asleep."""
        if self.cfg.legacy:
            return bool(self.asleep_tags)
        return bool(self.asleep_tags) or bool(self.sched.pause)

    @property
    def level(self) -> int | None:
        if self.phase != "running" or self.state == "awake":
            return None
        return (
            0
            if not self.asleep_tags
            else (2 if self.weights_discarded or not self.offloaded else 1)
        )

    def snapshot(self) -> dict[str, object]:
        running, waiting = self.sched.running, self.sched.waiting
        return {
            "name": self.name,
            "state": self.state,
            "level": self.level,
            "profile": self.cfg.profile,
            "is_sleeping": self.is_sleeping,
            "asleep_tags": sorted(self.asleep_tags),
            "weights_discarded": self.weights_discarded,
            "transition": self.transition,
            "paused": self.sched.api_pause.name.lower(),
            "running": running,
            "waiting": waiting,
            "device": self.device.snapshot(),
            "held_bytes": self.device.held_by(self),
            "pinned_host_bytes": self.host_memory.pinned.get(self, 0),
            "violations": len(self.violations),
            "port": self.bound_port,
        }

    def record(self, kind: ViolationKind, message: str) -> Violation:
        v = Violation(kind=kind, message=message, at=self.clock.wall(), engine=self.name)
        self.violations.append(v)
        log.warning("contract violation on %s: %s: %s", self.name, kind, message)
        return v

    # --- memory ------------------------------------------------------------------------------
    def resident_bytes(self, asleep: set[MemTag] | None = None) -> int:
        asleep = self.asleep_tags if asleep is None else asleep
        held = self.residual
        held += 0 if "weights" in asleep else self.weights_dev
        held += 0 if "kv_cache" in asleep else self.kv_dev
        return held

    def hold(self, n_bytes: int, *, check: bool = True) -> None:
        """Set this engine's device memory; an exited process holds nothing, whatever its
        in-flight operations still try to do."""
        if self.phase in ("dead", "failed"):
            raise EngineDead()
        self.device.set_held(self, n_bytes, check=check)

    def begin_transition(self, what: str) -> None:
        others = [e for e in self.device.transitions if e is not self]
        if others:
            names = ", ".join(getattr(e, "name", str(e)) for e in others)
            self.record(
                "concurrent_transition",
                f"{what} on {self.device.name} while {names} is changing memory",
            )
        self.device.transitions.add(self)

    def end_transition(self) -> None:
        self.device.transitions.discard(self)

    # --- lifecycle ---------------------------------------------------------------------------
    def begin_loading(self) -> None:
        self._load_task = asyncio.create_task(load(self), name=f"load {self.name}")

    def fail(self, kind: ViolationKind, message: str) -> None:
        """Startup failed: the process exits with this error."""
        log.error("%s: startup failed: %s", self.name, message)
        self.failure = message
        self._exit("failed", kind, message)

    def crash(self, message: str) -> None:
        """The engine core died (e.g. CUDA illegal address); the API server exits with it."""
        if self.phase in ("dead", "failed"):
            return
        log.error("%s: engine core died: %s", self.name, message)
        self._exit("dead", "engine_crash", message)

    def _exit(
        self, phase: Literal["dead", "failed"], kind: ViolationKind | None, message: str
    ) -> None:
        if kind is not None:
            self.record(kind, message)
        self.phase = phase
        self.sched.kill()
        self.device.release(self)  # the process is gone, and so are its allocations
        self.host_memory.unpin(self)
        self.device.transitions.discard(self)
        self.ready.set()
        self.dead.set()
        if self.close_server is not None:
            # Let the responses already written (500s) go out, then stop listening.
            self._close_task = asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        closer, self.close_server = self.close_server, None
        if closer is not None:
            await closer()

    async def stop(self) -> None:
        """SIGTERM: the process exits; not a violation."""
        if self._load_task and not self._load_task.done():
            self._load_task.cancel()
            await asyncio.gather(self._load_task, return_exceptions=True)
        if self.phase not in ("dead", "failed"):
            self._exit("dead", None, "stopped")
        await self._close()

    # --- one engine step for one request ------------------------------------------------------
    async def step(self, req: SimRequest) -> None:
        if self.cfg.legacy and self.utility_lock.locked():
            # ≤0.16: a utility call (sleep/wake) runs between steps and blocks the busy loop.
            async with self.utility_lock:
                pass
        if self.sched.dead:
            raise EngineDead()
        if self.asleep_tags:
            self.crash(
                f"CUDA error: an illegal memory access was encountered (step of {req.id} with "
                f"{', '.join(sorted(self.asleep_tags))} unmapped)"
            )
            raise EngineDead()
        if self.weights_discarded and not req.garbage:
            req.garbage = True
            self.record(
                "garbage_weights", f"{req.id} served by level-2 weights that were never reloaded"
            )
