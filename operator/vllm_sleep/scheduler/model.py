"""What the scheduler sees of a GPU pool: devices, nodes and the engines placed on them.

Plain frozen values built by the operator from observed state (agents' reports, pod and pool
status). Nothing here is remembered between calls: every plan is derived from one of these
snapshots, so a crashed operator re-derives the same plan from the same observations.

Sizes are bytes, times are unix seconds (an argument, never read from a clock).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from types import MappingProxyType


class EngineState(StrEnum):
    PENDING = "pending"  # no engine process yet (unplaced, or placed and not started)
    LOADING = "loading"  # vLLM starts: loads weights and profiles memory
    AWAKE = "awake"
    SLEEPING = "sleeping"  # draining or going to sleep
    WAKING = "waking"
    ASLEEP = "asleep"


SLEEP_STATES = frozenset({EngineState.SLEEPING, EngineState.ASLEEP, EngineState.WAKING})
# The device is unsettled while one of these runs: vLLM's startup profiling and its sleep
# assertion both fail if a neighbour changes device memory meanwhile.
BUSY_STATES = frozenset({EngineState.LOADING, EngineState.SLEEPING, EngineState.WAKING})


@dataclass(frozen=True)
class Device:
    id: str
    node: str
    memory: int  # bytes

    def __post_init__(self) -> None:
        if self.memory <= 0:
            raise ValueError(f"device {self.id}: memory must be > 0, got {self.memory}")


@dataclass(frozen=True)
class Node:
    name: str
    host_budget: int | None = None  # bytes level-1 sleepers may pin; None = no limit

    def __post_init__(self) -> None:
        if self.host_budget is not None and self.host_budget < 0:
            raise ValueError(f"node {self.name}: host budget must be >= 0")


@dataclass(frozen=True)
class Engine:
    """One replica of a model (tensor parallel 1: one device)."""

    replica: str  # unique id, e.g. "ns/model-0"
    model: str  # replicas of one model share it ("ns/model")
    share: int  # device bytes awake: gpuMemoryUtilization x device memory (or KV + weights)
    weights: int = 0  # bytes; what a level-1 sleep pins on the host
    device: str | None = None  # None: not placed yet
    state: EngineState = EngineState.PENDING
    # The model's sleep level: 1 (2 when the host budget is spent), 2 only, or 0 (KV-only: the
    # weights stay on the device; a plan that needs that memory sleeps it at level 2).
    level: int = 1
    sleep_level: int | None = None  # level of the current sleep (asleep, going to or waking from)
    priority: int = 0
    min_awake: float = 0.0  # seconds after a wake before it may be evicted
    evictable: bool = True  # False for policy AlwaysAwake: never put to sleep for a neighbour
    woken_at: float | None = None  # when it last became awake (after load or wake)
    last_activity: float | None = None  # last inference request
    inflight: int = 0
    held: int = 0  # requests waiting for this replica
    residual: int | None = None  # device bytes held asleep, measured after its first sleep
    holds_backup: bool = False  # pinned host backup of the weights exists now
    keeps_backup: bool = False  # vLLM >= 0.34: the backup made by a level-1 sleep stays for life
    kv: int | None = None  # bytes of its KV cache when sized (kvCacheSize): what level 0 frees

    def __post_init__(self) -> None:
        if self.share <= 0:
            raise ValueError(f"engine {self.replica}: share must be > 0, got {self.share}")
        if self.weights < 0 or (self.residual is not None and self.residual < 0):
            raise ValueError(f"engine {self.replica}: sizes must be >= 0")
        if self.level not in (0, 1, 2):
            raise ValueError(f"engine {self.replica}: level must be 0, 1 or 2, got {self.level}")
        if self.sleep_level not in (None, 0, 1, 2):
            raise ValueError(f"engine {self.replica}: sleep_level must be 0, 1, 2 or None")
        if self.kv is not None and not 0 <= self.kv <= self.share:
            raise ValueError(f"engine {self.replica}: kv must be within 0 and its share")
        if self.state in SLEEP_STATES and self.sleep_level is None:
            raise ValueError(f"engine {self.replica}: {self.state} needs its sleep_level")
        if self.state == EngineState.PENDING and self.holds_backup:
            raise ValueError(f"engine {self.replica}: pending (no process) but holds a backup")
        if self.device is None and self.state != EngineState.PENDING:
            raise ValueError(f"engine {self.replica}: {self.state} but placed on no device")
        if self.inflight < 0 or self.held < 0:
            raise ValueError(f"engine {self.replica}: inflight and held must be >= 0")


@dataclass(frozen=True)
class Pool:
    devices: tuple[Device, ...]
    nodes: tuple[Node, ...]
    engines: tuple[Engine, ...]
    # Device bytes a sleeping engine is assumed to hold until its first sleep is measured
    # (GPUPool spec.sleepResidual). Measured residuals replace it per engine.
    default_residual: int = 1 << 30
    slots_per_device: int = 4  # most replicas placed on one device, awake or asleep

    def __post_init__(self) -> None:
        node_names = [n.name for n in self.nodes]
        if len(set(node_names)) != len(node_names):
            raise ValueError("node names must be unique")
        device_ids = [d.id for d in self.devices]
        if len(set(device_ids)) != len(device_ids):
            raise ValueError("device ids must be unique")
        known_nodes = set(node_names)
        for d in self.devices:
            if d.node not in known_nodes:
                raise ValueError(f"device {d.id}: unknown node {d.node}")
        replicas = [e.replica for e in self.engines]
        if len(set(replicas)) != len(replicas):
            raise ValueError("engine replica ids must be unique")
        known_devices = set(device_ids)
        for e in self.engines:
            if e.device is not None and e.device not in known_devices:
                raise ValueError(f"engine {e.replica}: unknown device {e.device}")
        if self.default_residual < 0 or self.slots_per_device < 1:
            raise ValueError("default_residual must be >= 0 and slots_per_device >= 1")

    @cached_property
    def _by_device(self) -> Mapping[str, tuple[Engine, ...]]:
        by_device: dict[str, list[Engine]] = {d.id: [] for d in self.devices}
        for e in self.engines:
            if e.device is not None:
                by_device[e.device].append(e)
        return MappingProxyType({d: tuple(es) for d, es in by_device.items()})

    @cached_property
    def device_by_id(self) -> Mapping[str, Device]:
        return MappingProxyType({d.id: d for d in self.devices})

    @cached_property
    def node_by_name(self) -> Mapping[str, Node]:
        return MappingProxyType({n.name: n for n in self.nodes})

    @cached_property
    def engine_by_replica(self) -> Mapping[str, Engine]:
        return MappingProxyType({e.replica: e for e in self.engines})

    def on_device(self, device: str) -> tuple[Engine, ...]:
        return self._by_device[device]

    @cached_property
    def devices_by_node(self) -> Mapping[str, tuple[str, ...]]:
        ids: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for d in self.devices:
            ids[d.node].append(d.id)
        return MappingProxyType({n: tuple(ds) for n, ds in ids.items()})

    def on_node(self, node: str) -> tuple[Engine, ...]:
        return tuple(e for d in self.devices_by_node[node] for e in self._by_device[d])

    def node_of(self, device: str) -> Node:
        return self.node_by_name[self.device_by_id[device].node]

    def busy(self, device: str) -> Engine | None:
        """The engine loading or in a transition on the device, if any."""
        for e in self._by_device[device]:
            if e.state in BUSY_STATES:
                return e
        return None

    def replace(self, *engines: Engine) -> Pool:
        """The same pool with these engines (matched by replica id) replaced."""
        new = {e.replica: e for e in engines}
        return Pool(
            devices=self.devices,
            nodes=self.nodes,
            engines=tuple(new.pop(e.replica, e) for e in self.engines),
            default_residual=self.default_residual,
            slots_per_device=self.slots_per_device,
        )
