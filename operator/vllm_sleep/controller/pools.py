"""The per-GPUPool actor: the pool's devices, its members' latest replicas, and device turns.

Each ModelController in a pool publishes its replicas every pass (as `scheduler.Engine` values)
through the gatekeeper this actor gives it, and gets back what may run now
(`reconcile.pool_gate`). The actor itself decides nothing; it only holds:

- the device inventory (DRA ResourceSlices, or nodes' extended resource), refreshed periodically;
- each member's replicas as last published, and which of them its model wants awake;
- device turns: the replica whose step (sleep, wake, start-up) runs on a device now. A turn is
  taken in the same synchronous step as the gate that admitted it, so two members can never
  start steps on one device at once, and released once the holder is observed settled.

Nothing here is truth that survives a restart: turns and the replicas just seated are derived
again from the engines' reported states (a replica mid-transition keeps its device busy).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ..api.agent_protocol import StateReport
from ..api.gpu_pool import GPUPoolSpec, Sharing
from ..api.model_deployment import ModelDeployment
from ..api.names import ANNOTATION_DEVICE, LABEL_MODEL
from ..metrics import OperatorMetrics
from ..reconcile.lifecycle import Wake
from ..reconcile.pool_devices import (
    LABEL_POOL,
    PoolDevice,
    claim_manifest,
    claim_name,
    no_devices,
    pool_devices,
    schedulable,
    tainted_nodes,
    unused_claims,
)
from ..reconcile.pool_engines import model_engines, model_key, replica_key
from ..reconcile.pool_gate import Gate, PoolRequest, PoolView, gate, starting_up
from ..reconcile.pool_status import pool_status
from ..scheduler import Device, Engine, EngineState, Node, Pool
from ..vllm.versions import Features, VLLMVersion
from .kube import Kube

log = logging.getLogger(__name__)

INVENTORY_SECONDS = 30.0  # devices change rarely (nodes join or leave)
STARTING_SECONDS = 120.0  # a seated pod not observed by then was never created
STATUS_DELAY = 1.0  # status writes are coalesced
REREAD_RETRY = 5.0  # seconds before a failed background re-read of the devices is tried again
# While a model that left the pool (deleted, moved out, its GPUPool deleted) may still have pods
# on its devices, they are re-read this often: those devices run nothing new until it is gone.
DEPARTED_REREAD = 2.0
STALE_TURN = 120.0  # a settled holder's turn another member may clear
# A step named next again by a gate whose inputs did not change (a waiting wake's recheck) is
# handed to its model at most this often: what made it next may be only time passing (a
# neighbour's minAwake ending), which publishes nothing and so kicks no one.
REHAND_SECONDS = 1.0
# The longest a member's pass waits for the pool's swap orders to reach their agents
# (`ordering`): a bound, so that an order its agent never reports cannot stall a loop for long.
ORDER_WAIT_SECONDS = 0.5
SETTLED = frozenset({EngineState.AWAKE, EngineState.ASLEEP, EngineState.PENDING})


class PoolActor:
    def __init__(self, name: str, kube: Kube, metrics: OperatorMetrics) -> None:
        self.name = name
        self._kube = kube
        self._metrics = metrics
        self.spec: GPUPoolSpec | None = None
        self.devices: tuple[PoolDevice, ...] = ()
        self.class_found = True  # DRA: whether the pool's DeviceClass exists (last read)
        self.tainted: tuple[str, ...] = ()  # nodes left out for their taints (last read)
        self._inventory_at = -math.inf
        self._rereading: asyncio.Task[None] | None = None
        self.engines: dict[str, tuple[Engine, ...]] = {}  # model key -> its replicas
        self.wants: dict[str, frozenset[str]] = {}  # model key -> replicas it wants awake
        self.turns: dict[str, str] = {}  # device -> replica whose step runs there
        self.occupants: dict[str, set[str]] = {}  # device -> models with a pod there
        self._departed: set[str] = set()  # models that left while they had pods on devices
        self._turn_since: dict[str, float] = {}  # device -> when its turn was taken
        self.starting: dict[str, tuple[str, float]] = {}  # replica -> (device, seated at)
        self.members: dict[str, asyncio.Event] = {}  # model key -> its loop's kick
        self.hand_offs: dict[str, Callable[[], None]] = {}  # model key -> runs its step now
        self._handed_at: dict[str, float] = {}  # model key -> when it was last handed a step
        self._due: list[Callable[[], None]] = []  # hand-offs named by gates, not yet run
        self._running_due = False
        self._evicting_for: dict[str, float] = {}  # replica -> when its first eviction began
        self._waiting: set[str] = set()
        self._claims: set[tuple[str, str]] = set()
        self._claim_used: dict[tuple[str, str], float] = {}  # (ns, claim) -> last handed out
        self._status_task: asyncio.Task[None] | None = None
        self._last_status: dict[str, Any] | None = None
        # Sleep and wake orders their agents have not reported yet: order -> when it was given.
        self._orders: dict[object, float] = {}
        self._told = asyncio.Event()  # set when an order is told

    # --- inventory --------------------------------------------------------------------------

    async def refresh(self, spec: GPUPoolSpec) -> None:
        """Read the pool's devices first and when the spec changed; re-read them when the last
        read is old, in the background: a member's pass (on a swap's path) never waits for
        the periodic re-read, and the devices it changes change rarely (nodes join or leave)."""
        now = time.monotonic()
        due = DEPARTED_REREAD if self._departed else INVENTORY_SECONDS
        if spec != self.spec:
            await self._read(spec, now)
        elif now - self._inventory_at >= due and (
            self._rereading is None or self._rereading.done()  # one re-read at a time
        ):
            self._inventory_at = now
            self._rereading = asyncio.create_task(
                self._reread(spec, now), name=f"GPUPool {self.name} inventory"
            )

    async def _reread(self, spec: GPUPoolSpec, now: float) -> None:
        try:
            await self._read(spec, now, current_only=True)
        except Exception:  # the devices read before stay; tried again shortly
            log.warning("GPUPool %s: devices not re-read", self.name, exc_info=True)
            self._inventory_at = now - INVENTORY_SECONDS + REREAD_RETRY

    async def _read(self, spec: GPUPoolSpec, now: float, current_only: bool = False) -> None:
        """Read the devices of `spec`; `current_only`: keep them only if the pool's spec is
        still `spec` when the read ends (a background re-read the spec's change overtook)."""
        nodes = await self._kube.list_nodes()
        slices: list[dict[str, Any]] = []
        device_class: dict[str, Any] | None = None
        if spec.sharing == Sharing.DRA:
            slices = await self._kube.list_resource_slices()
            device_class = await self._kube.get_cluster_object(
                "resource.k8s.io", "v1", "deviceclasses", spec.device_class_name
            )
        devices = pool_devices(spec, nodes, slices, device_class)
        class_found = spec.sharing != Sharing.DRA or device_class is not None
        seated: set[str] | None = None  # pods not listed: no device is left out for taints
        try:
            pods = await self._kube.list_model_pods()
        except Exception:
            log.warning("GPUPool %s: model pods not listed", self.name, exc_info=True)
        else:
            self.occupants = _occupants(pods, {d.id for d in devices})
            seated = set(self.occupants) | {device for device, _ in self.starting.values()}
            self._departed &= {m for models in self.occupants.values() for m in models}
            if spec.sharing == Sharing.DRA:
                await self.collect_claims(pods)
        devices = schedulable(spec, devices, nodes, seated)
        if current_only and spec != self.spec:
            return
        if devices != self.devices or spec != self.spec:
            log.info("GPUPool %s: %d device(s)", self.name, len(devices))
        self.spec, self.devices, self._inventory_at = spec, devices, now
        self.class_found = class_found
        self.tainted = tainted_nodes(spec, nodes)

    def unknown(self) -> dict[str, str]:
        """Devices held by pods of models that have not published yet (as turns)."""
        return {
            device: "(a model not yet observed)"
            for device, models in self.occupants.items()
            if models - set(self.engines)
        }

    def snapshot(self) -> Pool:
        spec = self.spec
        assert spec is not None, "refresh() first"
        known = {d.id for d in self.devices}
        budget = spec.host_offload_budget.bytes() if spec.host_offload_budget else None
        nodes = sorted({d.node for d in self.devices})
        engines = [
            e for es in self.engines.values() for e in es if e.device is None or e.device in known
        ]
        slots = 1 if spec.sharing == Sharing.EXCLUSIVE else spec.slots_per_device
        return Pool(
            devices=tuple(Device(d.id, d.node, d.memory) for d in self.devices),
            nodes=tuple(Node(n, budget) for n in nodes),
            engines=tuple(engines),
            default_residual=spec.sleep_residual.bytes(),
            slots_per_device=slots,
        )

    # --- members ----------------------------------------------------------------------------

    def join(
        self, key: str, kick: asyncio.Event, hand_off: Callable[[], None] | None = None
    ) -> None:
        """`hand_off`: plans the member's step and starts it, synchronously, from what its
        loop has cached (`ModelController.hand_off`); called when the step is the next one on
        a device, so a swap's sleep and wake follow each other without waiting for passes."""
        self.members[key] = kick
        self._departed.discard(key)
        if hand_off is not None:
            self.hand_offs[key] = hand_off

    def leave(self, key: str) -> None:
        """The model no longer publishes here. Its pods may outlive it on the devices (a
        deleted model's pods drain for up to their grace period; a model moved out of the pool,
        or whose GPUPool was deleted, keeps them until they are replaced): until a re-read of
        the pods shows them gone, its devices count as held by a model not observed (`unknown`),
        so nothing starts or wakes in memory they may still hold."""
        self.members.pop(key, None)
        self.hand_offs.pop(key, None)
        self._handed_at.pop(key, None)
        engines = self.engines.pop(key, ())
        for e in engines:
            if e.device is not None and e.state != EngineState.PENDING:
                self.occupants.setdefault(e.device, set()).add(key)
                self._departed.add(key)
        gone = {e.replica for e in engines}
        self.wants.pop(key, None)
        for device, holder in list(self.turns.items()):
            if holder in gone:
                del self.turns[device]
                self._turn_since.pop(device, None)
        for replica in gone:
            self.starting.pop(replica, None)
        self._kick_others(key)
        self._schedule_status()

    def gatekeeper(
        self,
        ns: str,
        model: ModelDeployment,
        reports: Mapping[str, StateReport],
        now: float,
        demand_at: float | None = None,
    ) -> Callable[[PoolRequest], Gate]:
        """The gate of one pass of `model` (synchronous: publish, derive, take turns)."""
        name = model.metadata.name
        key = model_key(ns, name)
        spec = self.spec
        assert spec is not None, "refresh() first"

        def keeper(request: PoolRequest) -> Gate:
            self._forget_started(ns, request)
            starting = {r: d for r, (d, _) in self.starting.items()}
            engines = model_engines(
                model,
                request,
                reports,
                spec,
                starting,
                demand_at,
                now,
                keeps_backup=backup_kept_while_awake,
            )
            wants = frozenset(
                replica_key(ns, a.pod) for a in request.actions if isinstance(a, Wake)
            )
            moved = self._publish(key, engines, wants, now)
            view = PoolView(
                pool=self.snapshot(),
                sharing=spec.sharing,
                turns={**self.unknown(), **self.turns},
                wants=frozenset().union(*self.wants.values()),
            )
            g = gate(view, ns, request, now)
            if g.never and not self.devices:  # say why there are none, not only "none"
                why = no_devices(self.name, spec, self.class_found, self.tainted)
                g = replace(g, never={r: f"{r} cannot be placed: {why}" for r in g.never})
            self.turns.update(g.turns)
            self._turn_since.update({d: time.monotonic() for d in g.turns})
            for i, device in g.seats.items():
                self.starting[replica_key(ns, request.indexes[i])] = (device, time.monotonic())
            self._count(g, now)
            self._hand_off(key, g.next_steps, now, moved)
            return g

        return keeper

    def start_up_beside(self, device: str, replica: str) -> bool:
        """Whether another replica starts up on `device` now (`pool_gate.starting_up`)."""
        holder = self.turns.get(device)
        if holder is None or holder == replica:
            return False
        state: EngineState | None
        if holder in self.starting:  # seated by a gate; its model has not published it yet
            state = EngineState.LOADING
        else:
            engines = (e for es in self.engines.values() for e in es if e.replica == holder)
            state = next((e.state for e in engines), None)
        mono = time.monotonic()
        return starting_up(state, mono - self._turn_since.get(device, mono))

    def _forget_started(self, ns: str, request: PoolRequest) -> None:
        """A seated replica is its pod's business once the pod is seen (or never will be)."""
        for pod in request.live:
            if pod.device is not None:
                self.starting.pop(replica_key(ns, pod.name), None)
        mono = time.monotonic()
        for name in request.indexes.values():
            seated = self.starting.get(replica_key(ns, name))
            if seated is not None and mono - seated[1] > STARTING_SECONDS:
                del self.starting[replica_key(ns, name)]

    def _publish(
        self, key: str, engines: tuple[Engine, ...], wants: frozenset[str], now: float
    ) -> bool:
        """Record the member's replicas; whether that may change another member's plan."""
        before = self.engines.get(key)
        changed = _signature(before or ()) != _signature(engines) or self.wants.get(key) != wants
        self.engines[key] = engines
        self.wants[key] = wants
        by_replica = {e.replica: e for e in engines}
        released = False
        mine = {e.replica for e in engines}
        everyone = {e.replica: e for es in self.engines.values() for e in es}
        mono = time.monotonic()
        for device, holder in list(self.turns.items()):
            if holder in mine:
                e = by_replica.get(holder)
                stale = e is None or e.device != device or e.state in SETTLED
            else:
                # The holder's own loop releases its turn; if that loop stalled (or its model
                # left without saying so), a turn whose holder looks settled expires.
                other = everyone.get(holder)
                settled = other is None or other.state in SETTLED
                stale = settled and mono - self._turn_since.get(device, mono) > STALE_TURN
            if stale:
                del self.turns[device]
                self._turn_since.pop(device, None)
                released = True
        for e in engines:
            if e.state == EngineState.AWAKE and e.replica in self._evicting_for:
                began = self._evicting_for.pop(e.replica)
                self._metrics.pool_swap_seconds.labels(self.name).observe(max(0.0, now - began))
        if changed or released:
            self._kick_others(key)
            self._schedule_status()
        return changed or released

    def _hand_off(self, key: str, replicas: tuple[str, ...], now: float, moved: bool) -> None:
        """Hand the next steps to their models' loops now (soon after this synchronous gate,
        on the event loop), not at their next pass. Each plans and gates again itself, so
        this only makes a step start sooner, never lets one start that its gate refuses.

        After a change (`moved`) at once; otherwise at most every REHAND_SECONDS per model:
        a step can become next with nothing published (a neighbour's minAwake ends while a
        wake waits on it), and the waiting model's recheck is then the only one to see it."""
        owners = {e.replica: e.model for es in self.engines.values() for e in es}
        due = {owners[r] for r in replicas if r in owners} - {key}
        if not moved:
            due = {m for m in due if now - self._handed_at.get(m, -math.inf) >= REHAND_SECONDS}
        if not due:
            return
        loop = asyncio.get_running_loop()
        for model in sorted(due):
            hand_off = self.hand_offs.get(model)
            if hand_off is not None:
                self._handed_at[model] = now
                self._due.append(hand_off)
                loop.call_soon(self.run_due)

    def run_due(self) -> None:
        """Run the hand-offs the last gates named. A hand-off never runs inside a gate (its
        plan gates too), so the member whose hand-off ran that gate calls this right after it
        (`ModelController.hand_off`): the next step starts in the same event-loop step, not
        after whatever else is ready (the long-poll that brought the report re-arming, other
        members' passes). The event loop calls it too, for gates that ran in a pass."""
        if self._running_due:
            return  # the outer call runs what its hand-offs name
        self._running_due = True
        try:
            # Bounded: a step handed back and forth is left to the event loop's next call.
            for _ in range(2 * len(self.hand_offs) + 2):
                if not self._due:
                    break
                self._due.pop(0)()
        finally:
            self._running_due = False

    def _count(self, g: Gate, now: float) -> None:
        m = self._metrics
        for text in g.evictions:
            m.pool_evictions.labels(self.name).inc()
            target = text.rpartition(" to ")[2].split(" ", 1)[-1]
            if target not in self._evicting_for:
                self._evicting_for[target] = now
                m.pool_swaps.labels(self.name).inc()
        newly = set(g.waiting) - self._waiting
        for _ in newly:
            m.pool_refusals.labels(self.name, "NotNow").inc()
        for replica in g.never:
            if replica not in self._waiting:
                m.pool_refusals.labels(self.name, "Never").inc()
        mine = set(g.waiting) | set(g.never)
        self._waiting = (self._waiting - {r for r in self._waiting if r not in mine}) | mine

    def _kick_others(self, key: str) -> None:
        for other, kick in self.members.items():
            if other != key:
                kick.set()

    # --- sleep and wake orders on a swap's path ------------------------------------------------

    def ordering(self) -> Callable[[], None]:
        """A member orders a replica's sleep or wake: until the returned callable says its
        agent has it (the agent reported since, or the call ended; idempotent), members'
        passes wait (`delivered`). Each pass is CPU on the operator's event loop; the hand-off
        that starts a swap's step also kicks both members' loops, and their passes ran before
        the order's request left (the swap's two agent calls each waited for two passes).
        What passes do (status, events, the rest of the plan) can wait that long."""
        order = object()
        self._orders[order] = time.monotonic()

        def told() -> None:
            if self._orders.pop(order, None) is not None:  # idempotent
                self._told.set()

        return told

    async def delivered(self) -> None:
        """Return once every member's sleep and wake order reached its agent, or is older than
        ORDER_WAIT_SECONDS. The bound is each order's, from when it was given, not each
        waiter's: an agent that never reports (its watch down, a long drain) holds the pool's
        passes back once, not 0.5 s more for every pass, write and Event that comes after."""
        while True:
            now = time.monotonic()
            fresh = [t for t in self._orders.values() if now - t < ORDER_WAIT_SECONDS]
            if not fresh:
                return
            self._told.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._told.wait(), min(fresh) + ORDER_WAIT_SECONDS - now)

    # --- DRA claims ---------------------------------------------------------------------------

    async def ensure_claim(self, namespace: str, device_id: str) -> str:
        """The namespace's ResourceClaim of the device (created once); its name."""
        name = claim_name(device_id)
        self._claim_used[(namespace, name)] = time.monotonic()
        if (namespace, device_id) in self._claims or self.spec is None:
            return name
        device = next((d for d in self.devices if d.id == device_id), None)
        if device is None:
            raise RuntimeError(f"GPUPool {self.name}: device {device_id} is not in the pool")
        await self._kube.create_if_missing(
            claim_manifest(namespace, self.name, device, self.spec.device_class_name)
        )
        self._claims.add((namespace, device_id))
        return name

    async def collect_claims(self, pods: list[dict[str, Any]]) -> None:
        """Delete the pool's claims no pod of their namespace references any more. A claim
        handed out for a pod about to be created (within STARTING_SECONDS) is kept."""
        try:
            claims = await self._kube.list_claims(f"{LABEL_POOL}={self.name}")
            mono = time.monotonic()
            for ns, name in unused_claims(self.name, claims, pods):
                if mono - self._claim_used.get((ns, name), -math.inf) < STARTING_SECONDS:
                    continue
                await self._kube.delete_claim(ns, name)
                log.info("GPUPool %s: deleted unused ResourceClaim %s/%s", self.name, ns, name)
                self._claim_used.pop((ns, name), None)
                self._claims = {c for c in self._claims if (c[0], claim_name(c[1])) != (ns, name)}
        except Exception:  # the next inventory pass tries again
            log.warning("GPUPool %s: unused claims not collected", self.name, exc_info=True)

    # --- status ---------------------------------------------------------------------------------

    def _schedule_status(self) -> None:
        if self._status_task is None or self._status_task.done():
            self._status_task = asyncio.create_task(
                self._write_status(), name=f"GPUPool {self.name} status"
            )

    async def _write_status(self) -> None:
        await asyncio.sleep(STATUS_DELAY)
        if self.spec is None:
            return
        status = pool_status(self.snapshot(), self.spec.sharing)
        if status == self._last_status:
            return
        try:
            await self._kube.patch_pool_status(self.name, status)
            self._last_status = status
        except Exception:  # status is informative: never let it break the actor
            log.warning("GPUPool %s: status not written", self.name, exc_info=True)

    async def close(self) -> None:
        for task in (self._status_task, self._rereading):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def engine_version(report: StateReport, image: str) -> VLLMVersion | None:
    """The replica's vLLM version: as its agent read it from `/version`, else its image tag
    ("vllm/vllm-openai:v0.34.0" -> 0.34.0); None when neither says."""
    if report.engine_version:
        known = VLLMVersion.parse(report.engine_version)
        if known is not None:
            return known
    name = image.split("@", 1)[0].rsplit("/", 1)[-1]
    tag = name.rpartition(":")[2] if ":" in name else ""
    return VLLMVersion.parse(tag) if tag else None


def backup_kept_while_awake(report: StateReport, image: str) -> bool:
    """Whether the replica's pinned host backup stays after a wake (vLLM >= 0.34; an unknown
    version is counted as keeping it, the reading that never under-counts host memory)."""
    return Features(engine_version(report, image)).backup_kept_while_awake


def _occupants(pods: list[dict[str, Any]], devices: set[str]) -> dict[str, set[str]]:
    """Device -> models with a pod seated there. Until each of them has published its
    replicas (e.g. right after an operator restart), its device runs nothing new: the
    memory its engines hold is not known yet."""
    out: dict[str, set[str]] = {}
    for p in pods:
        meta = p.get("metadata") or {}
        device = (meta.get("annotations") or {}).get(ANNOTATION_DEVICE)
        owner = (meta.get("labels") or {}).get(LABEL_MODEL)
        if device in devices and owner:
            out.setdefault(device, set()).add(model_key(meta.get("namespace", ""), owner))
    return out


def _signature(engines: tuple[Engine, ...]) -> tuple[tuple[str, str | None, str, bool], ...]:
    """What, when it changes, may change another member's plan: where each replica is, its
    state, and whether it is busy (requests in flight or held block its eviction, so its going
    idle is what a wake waiting on it needs to hear; without it that wake waited for a resync)."""
    return tuple((e.replica, e.device, e.state.value, bool(e.inflight or e.held)) for e in engines)


class Pools:
    """Every GPUPool's actor, made on first use."""

    def __init__(self, kube: Kube, metrics: OperatorMetrics) -> None:
        self._kube = kube
        self._metrics = metrics
        self.actors: dict[str, PoolActor] = {}

    def get(self, name: str) -> PoolActor:
        actor = self.actors.get(name)
        if actor is None:
            actor = self.actors[name] = PoolActor(name, self._kube, self._metrics)
        return actor

    def start_up_beside(self, device: str, replica: str) -> bool:
        """Whether another replica starts up on `device` in any pool: asked before a seated pod
        is deleted, also by a model no longer in that pool (moved out of it, or the GPUPool was
        deleted), whose old pod is still on the device."""
        return any(actor.start_up_beside(device, replica) for actor in self.actors.values())
