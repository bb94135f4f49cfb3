"""GPU and host memory shared by the engines of one host process.

A GPUDevice is what `nvidia-smi` would show for one GPU: who holds how many bytes. Every change
is announced to the engines that are currently profiling on the device, because vLLM's startup
profiling asserts that nobody else changed free memory meanwhile (docs/vllm.md "Shared GPUs").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .units import gib

# Called with (device, who changed, delta bytes); the engine decides whether it cares.
MemoryListener = Callable[["GPUDevice", object, int], None]


class OutOfMemory(Exception):
    pass


@dataclass(eq=False)
class GPUDevice:
    name: str
    total_bytes: int
    index: int = 0  # cuda:N in vLLM's messages
    holders: dict[object, int] = field(default_factory=dict)
    _listeners: list[MemoryListener] = field(default_factory=list)
    transitions: set[object] = field(default_factory=set)  # engines mid sleep/wake/startup

    @property
    def node(self) -> str:
        """The host a device sits in ("node-0/gpu-1" -> "node-0"): pinned memory is per host."""
        return self.name.split("/", 1)[0] if "/" in self.name else self.name

    @property
    def used_bytes(self) -> int:
        return sum(self.holders.values())

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes

    def held_by(self, owner: object) -> int:
        return self.holders.get(owner, 0)

    def set_held(self, owner: object, n_bytes: int, *, check: bool = True) -> None:
        """Set what `owner` holds; growing past free memory raises OutOfMemory (cudaMalloc)."""
        old = self.holders.get(owner, 0)
        delta = n_bytes - old
        if delta == 0:
            return
        if check and delta > self.free_bytes:
            raise OutOfMemory(
                f"tried to allocate {gib(delta):.2f} GiB on {self.name}, "
                f"{gib(self.free_bytes):.2f} GiB free of {gib(self.total_bytes):.2f} GiB"
            )
        if n_bytes:
            self.holders[owner] = n_bytes
        else:
            self.holders.pop(owner, None)
        for listener in list(self._listeners):
            listener(self, owner, delta)

    def release(self, owner: object) -> None:
        self.set_held(owner, 0, check=False)

    def subscribe(self, listener: MemoryListener) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: MemoryListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def snapshot(self) -> dict[str, object]:
        return {
            "name": self.name,
            "total_bytes": self.total_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "holders": {str(k): v for k, v in self.holders.items()},
        }


@dataclass(eq=False)
class HostMemory:
    """Pinned host RAM of one node: the level-1 backups of the weights.

    0.34 makes an engine's backup at its first sleep and keeps it until the process exits;
    older versions free it on wake (docs/vllm.md "vLLM 0.34"). Either way it is charged here while it exists.
    """

    node: str
    limit_bytes: int | None = None
    pinned: dict[object, int] = field(default_factory=dict)

    @property
    def pinned_bytes(self) -> int:
        return sum(self.pinned.values())

    def pin(self, owner: object, n_bytes: int, owner_limit: int | None = None) -> None:
        """Pin `n_bytes` for `owner`; over the node's limit or the owner's own (its container's
        memory cgroup) raises OutOfMemory, as the kernel's OOM killer would end the process."""
        old = self.pinned.get(owner, 0)
        if owner_limit is not None and n_bytes > owner_limit:
            raise OutOfMemory(
                f"pinning {gib(n_bytes):.2f} GiB exceeds the container's memory limit "
                f"({gib(owner_limit):.2f} GiB)"
            )
        if self.limit_bytes is not None and self.pinned_bytes - old + n_bytes > self.limit_bytes:
            raise OutOfMemory(
                f"pinning {gib(n_bytes):.2f} GiB on host {self.node} exceeds its "
                f"{gib(self.limit_bytes):.2f} GiB limit ({gib(self.pinned_bytes):.2f} GiB pinned)"
            )
        self.pinned[owner] = n_bytes

    def unpin(self, owner: object) -> None:
        self.pinned.pop(owner, None)

    def snapshot(self) -> dict[str, object]:
        return {
            "node": self.node,
            "limit_bytes": self.limit_bytes,
            "pinned_bytes": self.pinned_bytes,
            "holders": {str(k): v for k, v in self.pinned.items()},
        }
