"""One simulated `vllm serve` process: lifecycle (load, profile, die, stop) and memory layout.

The sleep/wake/pause operations live in ops.py; HTTP in the routes_* modules. State that other
modules read is plain attributes, kept consistent by the methods here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Literal

from .clock import Clock
from .config import SimConfig
from .memory import GPUDevice, HostMemory
from .metrics_state import EngineMetrics
from .scheduler import EngineDead, Scheduler, SimRequest
from .startup import load
from .timing import Timings
from .violations import Violation, ViolationKind
from .vllm_log import VLLMLogFile

log = logging.getLogger(__name__)

EngineState = Literal["loading", "awake", "sleeping", "dead", "failed"]
MemTag = Literal["weights", "kv_cache"]
MEM_TAGS: tuple[MemTag, ...] = ("weights", "kv_cache")
CheckpointState = Literal["RUNNING", "PREPARED"]


@dataclass
class Transfers:
    """What moved, so a test can tell a weight copy from a KV-cache remap."""

    weights_to_host: int = 0  # level-1 sleeps that copied the weights out
    weights_to_gpu: int = 0  # wakes that copied them back
    weight_bytes_copied: int = 0  # both directions
    kv_releases: int = 0  # KV cache unmapped (sleep, /release_kv_cache_memory, checkpoint)
    kv_remaps: int = 0  # KV cache mapped again
    reloads: int = 0  # reload_weights from disk
    last_wake: dict[str, object] | None = None  # {"tags", "weights_copied", "kv_remapped"}


class SimEngine:
    def __init__(
        self,
        cfg: SimConfig,
        device: GPUDevice,
        host_memory: HostMemory,
        clock: Clock,
        memory_limit_bytes: int | None = None,
    ) -> None:
        self.cfg, self.device, self.host_memory = cfg, device, host_memory
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
        self.draft_discarded = False  # 0.34 level 2 dropped the draft model; nothing restores it
        self.offloaded = False  # weights sit in pinned host memory (level 1)
        self.kv_only = False  # only the KV cache was released (KV-only tier, checkpoint)
        # A sleep that tripped "Memory usage increased after sleeping": the memory is released
        # but the executor does not count itself asleep (is_sleeping, wake_up ignore it).
        self.sleep_unconfirmed = False
        self.injected_failures = 0  # --fail-sleeps used so far
        self.background: set[asyncio.Task[None]] = set()
        self.pinned_ready = False  # pinned buffers cached after the first level-1 sleep
        self.memory_limit_bytes = memory_limit_bytes  # the container's cgroup limit, if any
        self.transfers = Transfers()
        self.checkpoint: CheckpointState = "RUNNING"
        self.reset_connector: bool | None = None  # as the last /sleep or release asked (0.34)
        self.last_sleep: dict[str, object] | None = None  # vLLM's "Sleep mode freed ..." figures
        self.log_lines: list[str] = []  # what vLLM would log that a reader may parse
        self.log_file = VLLMLogFile.from_config(cfg.logging_config_path)  # ...and to its file
        self.sleep_gauge: str | None = "awake"  # None: awake=weights_offloaded=discard_all=0
        self.transition: str | None = None  # "startup" | "sleep" | "wake" | "reload" | ...
        self.utility_lock = asyncio.Lock()  # vLLM runs utility calls one at a time
        self.server_load = 0
        self.bound_port: int | None = None
        self.close_server: Callable[[], Awaitable[None]] | None = None
        self._load_task: asyncio.Task[None] | None = None
        self.failure: str | None = None  # why startup failed
        self._close_task: asyncio.Task[None] | None = None
        self._timings: tuple[int, Timings] | None = None
        # `requested`: what vLLM's startup check wants free (total x util). `share`: what the
        # engine holds awake. They differ with a fixed KV size; the extensible KV cache (0.34)
        # learns its size at the end of startup (startup.py).
        self.requested = int(device.total_bytes * cfg.util)
        self.residual = min(cfg.residual, self.requested)
        if cfg.kv_cache_memory_bytes is not None or cfg.extensible_kv:
            self.weights_dev = cfg.weights_bytes
            self.kv_dev = cfg.kv_cache_memory_bytes or 0
        else:
            self.weights_dev = min(cfg.weights_bytes, self.requested - self.residual)
            self.kv_dev = self.requested - self.residual - self.weights_dev
        self.share = self.residual + self.weights_dev + self.kv_dev

    # --- what the outside sees -------------------------------------------------------------
    def __repr__(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        """Where to dial this engine (an all-interfaces bind is dialled on 127.0.0.1)."""
        host = self.cfg.host if self.cfg.host not in (None, "", "0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.bound_port or self.cfg.port}"

    @property
    def timings(self) -> Timings:
        """The timing model for this engine's weights and (startup-sized) KV cache."""
        cached = self._timings
        if cached is None or cached[0] != self.kv_dev:
            cached = self._timings = (self.kv_dev, self.cfg.timings_for(self.kv_dev))
        return cached[1]

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
        memory = bool(self.asleep_tags) and not self.sleep_unconfirmed
        if self.cfg.legacy:
            return memory
        return memory or bool(self.sched.pause)

    @property
    def level(self) -> int | None:
        if self.phase != "running" or self.state == "awake":
            return None
        if not self.asleep_tags or self.kv_only:
            return 0  # a pause, or the KV-only tier (/release_kv_cache_memory): weights resident
        return 2 if self.weights_discarded or not self.offloaded else 1

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
            "draft_discarded": self.draft_discarded,
            "sleep_unconfirmed": self.sleep_unconfirmed,
            "vllm_version": self.cfg.version,
            "checkpoint": self.checkpoint,
            "transition": self.transition,
            "paused": self.sched.api_pause.name.lower(),
            "running": running,
            "waiting": waiting,
            "device": self.device.snapshot(),
            "held_bytes": self.device.held_by(self),
            "memory": {
                "gpu_memory_utilization": self.cfg.util,
                "extensible_kv": self.cfg.extensible_kv,
                "requested_bytes": self.requested,
                "share_bytes": self.share,
                "weights_bytes": self.weights_dev,
                "kv_cache_bytes": self.kv_dev,
                "residual_bytes": self.residual,
            },
            "pinned_host_bytes": self.host_memory.pinned.get(self, 0),
            "last_sleep": self.last_sleep,
            "reset_connector": self.reset_connector,
            "transfers": asdict(self.transfers),
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
        self.log_file.close()

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
        if self.draft_discarded and not req.draft_lost:
            # The target model still verifies every token, so the text is right; the drafts
            # come from discarded memory (docs/vllm.md "vLLM 0.34": reload_weights does not restore them).
            req.draft_lost = True
            self.record(
                "draft_model_lost",
                f"{req.id} served after a level-2 sleep discarded the draft model "
                f"(needs --sleep-preserve-parameter-names 'draft.*' or level 1)",
            )
