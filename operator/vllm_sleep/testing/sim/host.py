"""EngineHost: many simulated engines in one process, sharing simulated GPUs and host RAM."""

from __future__ import annotations

import asyncio
import itertools
import logging

from .clock import Clock
from .config import SimConfig
from .engine import SimEngine
from .memory import GPUDevice, HostMemory
from .server import serve
from .units import GiB
from .violations import Violation

log = logging.getLogger(__name__)


class EngineHost:
    """Owns devices, host memories and engines. Time runs at `time_scale` x an engine's own scale."""

    def __init__(self, time_scale: float = 1.0) -> None:
        self.clock = Clock(time_scale)
        self.devices: dict[str, GPUDevice] = {}
        self.host_memories: dict[str, HostMemory] = {}
        self.engines: list[SimEngine] = []  # every engine ever started: violations outlive restarts
        self._private = itertools.count()

    @property
    def time_scale(self) -> float:
        return self.clock.time_scale

    def device(self, name: str, total_bytes: int = 80 * GiB) -> GPUDevice:
        """Get or create the named GPU. An existing device keeps its size."""
        dev = self.devices.get(name)
        if dev is None:
            dev = self.devices[name] = GPUDevice(name, total_bytes)
        elif dev.total_bytes != total_bytes:
            log.warning(
                "device %s exists with %d bytes; ignoring total_bytes=%d",
                name,
                dev.total_bytes,
                total_bytes,
            )
        return dev

    def host_memory(self, node: str, limit_bytes: int | None = None) -> HostMemory:
        """Pinned host RAM of a node; a limit (if given) turns an over-budget level-1 offload
        into an OOM kill, as the pod's memory cgroup would."""
        mem = self.host_memories.get(node)
        if mem is None:
            mem = self.host_memories[node] = HostMemory(node)
        if limit_bytes is not None:
            mem.limit_bytes = limit_bytes
        return mem

    async def start_engine(
        self,
        cfg: SimConfig,
        device: GPUDevice | None = None,
        *,
        memory_limit_bytes: int | None = None,
    ) -> SimEngine:
        """Bind the engine's port (OSError if taken) and start loading in the background.

        `memory_limit_bytes`: the container's memory limit; a pinned backup above it is an
        OOM kill (`host_oom`)."""
        if device is None:
            device = self.device(f"private-{next(self._private)}", cfg.device_memory)
        engine = SimEngine(
            cfg,
            device,
            self.host_memory(device.node),
            self.clock,
            memory_limit_bytes=memory_limit_bytes,
        )
        await serve(engine)
        self.engines.append(engine)
        engine.begin_loading()
        return engine

    def live_engines(self) -> list[SimEngine]:
        return [e for e in self.engines if not e.dead.is_set()]

    def violations(self) -> list[Violation]:
        return sorted((v for e in self.engines for v in e.violations), key=lambda v: v.at)

    def pinned_bytes(self, node: str) -> int:
        mem = self.host_memories.get(node)
        return mem.pinned_bytes if mem else 0

    async def stop_all(self) -> None:
        await asyncio.gather(*(e.stop() for e in self.engines), return_exceptions=True)
