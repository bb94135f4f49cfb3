"""One reconcile pass of a ModelDeployment as a value: observed state + time -> Plan. Pure.

The controller (`controller/model.py`) observes into typed values (`Observed`), calls `plan`,
and a short executor applies the `Plan`: it deletes and creates pods, posts Events, flips
readiness gates, starts sleeps and wakes, and writes the status. Nothing is decided there.

Order of the decisions, as in KubeAI's and Knative's reconcilers:

1. converge pods: create missing replicas, delete surplus, outdated (spec hash) and ended ones,
   but only when the model can be placed (`Placement.gpu`); terminating pods are shown, not
   acted on, unless their node is lost (`reconcile.node_loss`: force-deleted, then replaced);
2. read each live replica's state from its agent's report, the pod's restart record and the
   transitions this operator has in flight, and its memory from the pod's annotations;
3. `lifecycle.decide` the routes, sleeps and wakes; drop sleeps and wakes a replica cannot take
   now (one is already running, or it has no IP yet);
4. a pooled model (`Observed.gatekeeper`) passes them, and the creation of its missing pods,
   through its pool's gate (`reconcile.pool_gate`): each runs when its device's turn comes,
   evictions of this model's replicas for a neighbour's plan are added, and a new pod is created
   only seated on the device the scheduler chose; then `admit` (docs/operator.md);
5. the Events not yet reported, and the status (`reconcile.status`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from ..api.agent_protocol import TRANSITIONING, UNREACHABLE_REPORT, AgentState, StateReport
from ..api.demand import parse_micro_time
from ..api.gpu_pool import Sharing
from ..api.model_deployment import ModelDeployment
from ..api.names import ANNOTATION_SLEEP_REQUEST, ANNOTATION_SPEC_HASH, pod_name
from ..api.served_names import Refusal
from .agent_wake import AgentWake, agent_wake, memory_with_agent_wake, slept_before
from .builders import GpuAttachment, Manifest, Owner, model_pod
from .lifecycle import Action, ReplicaMemory, ReplicaObservation, Route, Sleep, Wake, decide
from .node_loss import NODE_LOST_SECONDS, NodeHealth, lost, recheck_in, silent_young_in
from .observe import ObservedPod
from .placement import Placement
from .pod_memo import PodMemo
from .policy import policy_from_spec
from .pool_devices import claim_name, node_of
from .pool_engines import replica_key
from .pool_gate import Gate, PoolRequest
from .rollout import replace_now
from .status import Status, StatusFacts, model_status


class Transition(StrEnum):
    SLEEP = "sleep"
    WAKE = "wake"


@dataclass(frozen=True)
class Reported:
    """What this operator already said in Events, so each fact is reported once."""

    restarts: Mapping[str, int] = field(default_factory=dict)  # pod uid -> restarts reported
    problem: str | None = None  # the placement problem of the last pass
    waiting: frozenset[str] = frozenset()  # pooled replicas that waited for room last pass
    name_refusal: str | None = None  # the served-name refusal already posted
    agent_wakes: frozenset[str] = frozenset()  # wakes its agents ran, reported (AgentWake.key)


# A pooled model's pool: publishes the request's replicas and returns what may run (the
# controller's per-pool actor; `reconcile.pool_gate.gate` decides).
Gatekeeper = Callable[[PoolRequest], Gate]


@dataclass(frozen=True)
class Observed:
    """Everything one pass knows about a model; built by the controller, read by `plan`."""

    model: ModelDeployment
    owner: Owner
    agent_image: str
    placement: Placement
    pods: Sequence[ObservedPod]
    reports: Mapping[str, StateReport]  # pod name -> its agent's last report
    now: float  # unix seconds
    demand_at: float | None = None  # the demand Lease's newest renewTime
    transitions: Mapping[str, Transition] = field(default_factory=dict)  # pod -> running
    reported: Reported = Reported()
    last_sleep_seconds: float | None = None
    last_wake_seconds: float | None = None
    gatekeeper: Gatekeeper | None = None  # set for a model in a GPUPool
    # (device, replica) -> whether another replica starts up on that device now: a pod seated
    # there is not deleted meanwhile, whether or not its model is still in the pool (the GPUPools').
    start_up_beside: Callable[[str, str], bool] | None = None
    # Why the gateway serves this model nothing (api.served_names), or None.
    name_refusal: Refusal | None = None
    # The nodes of pods whose agent does not answer, by name (reconcile.node_loss).
    nodes: Mapping[str, NodeHealth] = field(default_factory=dict)
    node_lost_seconds: float = NODE_LOST_SECONDS
    # The model's pod manifests kept across its passes (the controller's); None builds each.
    pod_memo: PodMemo | None = None


@dataclass(frozen=True)
class DeletePod:
    name: str
    uid: str | None  # a precondition: never delete a successor that took the name
    why: str
    force: bool = False  # grace 0: its node is lost, no kubelet will confirm its end


@dataclass(frozen=True)
class CreatePod:
    manifest: Manifest

    @property
    def name(self) -> str:
        return str(self.manifest["metadata"]["name"])


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class Plan:
    delete: tuple[DeletePod, ...]
    create: tuple[CreatePod, ...]
    watch: Mapping[str, str]  # pod -> IP of every agent to long-poll
    actions: tuple[Action, ...]  # in order: a Route(False) always precedes its Sleep
    events: tuple[Event, ...]
    reported: Reported  # what the controller remembers for the next pass
    status: Status
    next_check_in: float | None  # seconds until a timer (idle, minAwake) may fire
    # Wakes the agents ran on their own (reconcile/agent_wake.py), each once: write its memory.
    agent_wakes: tuple[AgentWake, ...] = ()

    @property
    def starts_transitions(self) -> bool:
        """It starts a sleep or a wake (a grant taken back changes no state), which changes
        the status it computed."""
        return any(
            isinstance(a, Wake) or (isinstance(a, Sleep) and not a.grant_only) for a in self.actions
        )


# Gate for sleeps and wakes before they run. A device-level scheduler replaces a Wake it cannot
# fit by the sleeps that make room, then the Wake, or drops it until room is made.
Admit = Callable[[tuple[Action, ...]], tuple[Action, ...]]


def admit_all(actions: tuple[Action, ...]) -> tuple[Action, ...]:
    return actions


def plan(observed: Observed, admit: Admit = admit_all) -> Plan:
    model, now = observed.model, observed.now
    pooled = observed.gatekeeper is not None and observed.placement.gpu is not None
    live, delete, create = converge(observed, pooled)
    delete, retiring = _retire_first(observed, delete)
    if retiring:
        live = [*live, *(p for p in observed.pods if p.name in retiring)]
        create = tuple(c for c in create if c.name not in retiring)  # the name is still taken
    delete, deferred = _beside_a_start_up(observed, delete)
    events: list[Event] = [Event("Warning", "NodeLost", d.why) for d in delete if d.force]
    problem = observed.placement.problem

    restarts = dict(observed.reported.restarts)
    observations: list[ReplicaObservation] = []
    memory: dict[str, ReplicaMemory] = {}
    wakes: list[AgentWake] = []
    for pod in live:
        report = observed.reports.get(pod.name, UNREACHABLE_REPORT)
        obs = observe_replica(pod, report, observed.transitions.get(pod.name))
        if pod.name in retiring:
            obs = replace(obs, retiring=True)
        failure = pod.failure
        if obs.agent == AgentState.FAILED and failure is not None:
            key = pod.uid or pod.name
            if restarts.get(key) != failure.restarts:
                restarts[key] = failure.restarts
                events.append(Event("Warning", "EngineFailed", f"{pod.name}: {failure.reason}"))
        observations.append(obs)
        memory[pod.name] = replica_memory(pod, report)
        # A wake of the operator's own in flight (one that joined the agent's) is its to count.
        mine = pod.deleting or pod.name in observed.transitions
        woke = None if mine else agent_wake(pod.name, pod.memory, report)
        wakes += [woke] if woke is not None else []
    fresh = tuple(w for w in wakes if w.key not in observed.reported.agent_wakes)
    events += [Event("Normal", "Woke", w.message) for w in fresh]
    seen = {p.uid or p.name for p in observed.pods}
    restarts = {k: v for k, v in restarts.items() if k in seen}

    sleep_request = parse_micro_time(model.metadata.annotations.get(ANNOTATION_SLEEP_REQUEST))
    decision = decide(
        policy_from_spec(model.spec), observations, memory, observed.demand_at, now, sleep_request
    )
    by_name = {p.name: p for p in live}
    runnable = tuple(
        a
        for a in decision.actions
        if isinstance(a, Route) or (by_name[a.pod].ip and a.pod not in observed.transitions)
    )
    if model.spec.placement.pool and observed.placement.gpu is None:
        # Its GPUPool is gone or unusable while its pods run: only the pool's plan knows the
        # neighbours on a shared device and takes one step there at a time. A wake may need
        # room only it knows of (unsupervised, the engines ran out of device memory); a sleep
        # may run beside a neighbour's start-up or wake (vLLM's start-up profiling and its
        # sleep check fail). Nothing changes device memory until the pool is back: routes run.
        runnable = _routes_only(runnable)
    waiting: frozenset[str] = frozenset()
    waiting_text: str | None = None
    unseated_text: str | None = None
    if pooled and observed.gatekeeper is not None:
        # Pods deleted this pass (or whose deletion waits) hold their memory until kubelet
        # stopped them.
        going = {d.name for d in (*delete, *deferred)}
        leaving = [replace(p, deleting=True) for p in observed.pods if p.name in going]
        g = observed.gatekeeper(
            PoolRequest(
                live=[*live, *leaving],
                observations={o.pod: _running(o, observed.transitions) for o in observations}
                | {p.name: observe_replica(p, UNREACHABLE_REPORT) for p in leaving},
                indexes=_indexes(observed, live, going),
                actions=runnable,
            )
        )
        runnable = g.actions
        create = tuple(
            CreatePod(_pod_manifest(observed, i, device)) for i, device in sorted(g.seats.items())
        )
        events += [Event("Normal", "Evicted", text) for text in g.evictions]
        if g.never:
            problem = problem or next(iter(g.never.values()))
        waiting = frozenset(g.waiting)
        if waiting and not waiting <= observed.reported.waiting:
            text = "; ".join(g.waiting[r] for r in sorted(waiting))
            events.append(Event("Normal", "WaitingForDevice", text))
        why = {**g.queued, **g.waiting}
        if why:
            waiting_text = "; ".join(why[r] for r in sorted(why))
        # A replica the pool has no seat for has no pod: not every replica is placed.
        placed = {replica_key(observed.owner.namespace, p.name) for p in live}
        unseated = sorted(r for r in g.waiting if r not in placed)
        if unseated:
            unseated_text = "; ".join(g.waiting[r] for r in unseated)
    if problem and problem != observed.reported.problem:
        events.append(Event("Warning", "CannotPlace", problem))
    refusal = observed.name_refusal
    if refusal is not None and refusal.message != observed.reported.name_refusal:
        events.append(Event("Warning", refusal.reason.value, refusal.message))
    facts = StatusFacts(
        problem,
        last_sleep_seconds=observed.last_sleep_seconds,
        last_wake_seconds=observed.last_wake_seconds,
        waiting=waiting_text,
        name_refusal=(refusal.reason.value, refusal.message) if refusal else None,
        unseated=unseated_text,
        whole_model=observed.placement.problem is not None,
    )
    return Plan(
        delete=delete,
        create=create,
        watch={p.name: p.ip for p in live if p.ip and not p.deleting},
        actions=admit(runnable),
        events=tuple(events),
        reported=Reported(
            restarts,
            problem,
            waiting,
            refusal.message if refusal else None,
            frozenset(w.key for w in wakes),
        ),
        status=model_status(model, live, observations, observed.reports, now, facts),
        next_check_in=_sooner(
            _sooner(
                decision.next_check_in,
                recheck_in(list(live), observed.nodes, now, observed.node_lost_seconds),
            ),
            _sooner(
                silent_young_in(live, observed.reports, now, observed.node_lost_seconds),
                # A start-up takes seconds, and nothing kicks a model no longer in the pool
                # when it ends: the deletion that waits on it is looked at again soon.
                START_UP_RECHECK if deferred else None,
            ),
        ),
        agent_wakes=fresh,
    )


START_UP_RECHECK = 1.0  # seconds until a deletion that waits on a start-up is looked at again
# An engine in these states may be running requests (or about to): deleting its pod would cut
# them, since vLLM exits under them. It sleeps first (a sleep drains), and goes once asleep.
_SERVING = frozenset(
    {AgentState.AWAKE, AgentState.WAKING, AgentState.DRAINING, AgentState.SLEEPING}
)


def _retire_first(
    observed: Observed, delete: tuple[DeletePod, ...]
) -> tuple[tuple[DeletePod, ...], frozenset[str]]:
    """The deletions to make now, and the pods (outdated or surplus) whose engine may be
    serving: those are kept this pass and put to sleep first (`ReplicaObservation.retiring`),
    then deleted once asleep. A lost node's, an ended or a terminating pod goes as planned."""
    pods = {p.name: p for p in observed.pods}
    now: list[DeletePod] = []
    retiring: set[str] = set()
    for d in delete:
        pod = pods.get(d.name)
        report = observed.reports.get(d.name)
        serving = (
            not d.force
            and pod is not None
            and not pod.ended
            and not pod.deleting
            and pod.failure is None
            and report is not None
            and report.state in _SERVING
        )
        if serving:
            retiring.add(d.name)
        else:
            now.append(d)
    return tuple(now), frozenset(retiring)


def _beside_a_start_up(
    observed: Observed, delete: tuple[DeletePod, ...]
) -> tuple[tuple[DeletePod, ...], tuple[DeletePod, ...]]:
    """The deletions that may run now, and those that wait: a seated pod's engine releases its
    memory when it exits, which fails a neighbour's start-up profiling on that device (vLLM's
    "Error in memory profiling"), so its deletion waits for the start-up (this pass leaves the
    pod as it is). A lost node's pods go at once (their engines are gone already)."""
    beside = observed.start_up_beside
    if beside is None:
        return delete, ()
    seats = {p.name: p.device for p in observed.pods}
    ns = observed.owner.namespace
    now: list[DeletePod] = []
    later: list[DeletePod] = []
    for d in delete:
        device = seats.get(d.name)
        waits = not d.force and device is not None and beside(device, f"{ns}/{d.name}")
        (later if waits else now).append(d)
    return tuple(now), tuple(later)


def _routes_only(actions: tuple[Action, ...]) -> tuple[Action, ...]:
    """The routes of `actions` (and grant-only sleeps, which change no memory), but the unroute
    that prepares a sleep left out: that replica stays routed while its sleep waits."""
    out: list[Action] = []
    for i, a in enumerate(actions):
        nxt = actions[i + 1] if i + 1 < len(actions) else None
        prepares = (
            isinstance(nxt, Sleep) and not nxt.grant_only and nxt.pod == getattr(a, "pod", None)
        )
        unroute = isinstance(a, Route) and not a.routed and prepares
        if (isinstance(a, Route) and not unroute) or (isinstance(a, Sleep) and a.grant_only):
            out.append(a)
    return tuple(out)


def _sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _running(obs: ReplicaObservation, running: Mapping[str, Transition]) -> ReplicaObservation:
    """A replica whose sleep or wake this operator still runs (routing, memory) is mid
    transition for its pool, whatever its agent already reports: its device is not settled."""
    kind = running.get(obs.pod)
    if kind is None:
        return obs
    return replace(obs, agent=AgentState.WAKING if kind is Transition.WAKE else AgentState.SLEEPING)


def _indexes(observed: Observed, live: Sequence[ObservedPod], going: set[str]) -> dict[int, str]:
    """Replica index -> pod name of the replicas the pool may seat, wake or evict this pass
    (not those whose pod is being deleted: they are seated again once it is gone)."""
    out = {i: pod_name(observed.owner.name, i) for i in range(observed.model.spec.replicas)}
    out.update({p.replica: p.name for p in live if p.replica >= 0})
    return {i: name for i, name in out.items() if name not in going}


def seated(gpu: GpuAttachment, device: str) -> GpuAttachment:
    """The attachment of a pod seated on `device` by its pool's scheduler."""
    dra = gpu.pool is not None and gpu.pool.sharing == Sharing.DRA
    return GpuAttachment(
        pool=gpu.pool,
        claim=claim_name(device) if dra else None,
        node=node_of(device),
        device=device,
    )


def _gpu(observed: Observed, device: str | None) -> GpuAttachment:
    gpu = observed.placement.gpu or GpuAttachment()
    return gpu if device is None else seated(gpu, device)


def _pod_manifest(observed: Observed, replica: int, device: str | None) -> Manifest:
    gpu = _gpu(observed, device)
    spec = observed.model.spec
    return model_pod(observed.owner, spec, replica, agent_image=observed.agent_image, gpu=gpu)


def _want_hash(observed: Observed, replica: int, device: str | None) -> str | None:
    """The spec hash of the pod `_pod_manifest` would build (kept per generation, replica and
    GPU in the model's memo: every pass compares, few create)."""

    def build() -> str | None:
        return _spec_hash(_pod_manifest(observed, replica, device))

    memo = observed.pod_memo
    if memo is None:
        return build()
    generation, gpu = observed.model.metadata.generation, _gpu(observed, device)
    return memo.spec_hash(observed.owner.uid, generation, replica, observed.agent_image, gpu, build)


def converge(
    observed: Observed, pooled: bool = False
) -> tuple[list[ObservedPod], tuple[DeletePod, ...], tuple[CreatePod, ...]]:
    """The live pods, and the pod deletions and creations that bring them to the spec.

    Pooled: each pod is compared with itself built on its own device (a pod without one was
    made before the model joined its pool and is replaced); missing replicas are created only
    once the pool seats them (`plan`), so none is returned here.
    """
    gpu = observed.placement.gpu
    if gpu is None:  # cannot place: touch nothing, the status says why
        return list(observed.pods), (), ()
    spec = observed.model.spec
    live: list[ObservedPod] = []
    have: set[int] = set()
    delete: list[DeletePod] = []
    outdated: list[ObservedPod] = []
    for pod in observed.pods:
        gone = lost(pod, observed.nodes, observed.now, observed.node_lost_seconds)
        if gone is not None:  # even while terminating: its kubelet will never finish that
            delete.append(DeletePod(pod.name, pod.uid, gone, force=True))
            continue
        if pod.deleting:
            live.append(pod)
            have.add(pod.replica)
            continue
        wanted = 0 <= pod.replica < spec.replicas
        want_hash = None
        if wanted and (not pooled or pod.device is not None):
            want_hash = _want_hash(observed, pod.replica, pod.device)
        if not wanted:
            delete.append(DeletePod(pod.name, pod.uid, "surplus replica"))
        elif want_hash != pod.spec_hash and not pod.ended:
            outdated.append(pod)  # replaced one at a time while the others serve (`rollout`)
        elif want_hash != pod.spec_hash:
            delete.append(DeletePod(pod.name, pod.uid, "spec changed"))
        elif pod.ended:
            delete.append(DeletePod(pod.name, pod.uid, f"pod {pod.phase}"))
        else:
            live.append(pod)
            have.add(pod.replica)
    going, staying = replace_now(outdated, live, observed.reports, spec.replicas)
    delete += [DeletePod(p.name, p.uid, "spec changed") for p in going]
    kept = {p.name for p in live} | {p.name for p in staying}
    live = [p for p in observed.pods if p.name in kept]  # in the observed order
    have.update(p.replica for p in staying)
    if pooled:
        return live, tuple(delete), ()
    create = tuple(
        CreatePod(_pod_manifest(observed, i, None)) for i in range(spec.replicas) if i not in have
    )
    return live, tuple(delete), create


def observe_replica(
    pod: ObservedPod, report: StateReport, running: Transition | None = None
) -> ReplicaObservation:
    """The replica as `lifecycle.decide` sees it."""
    state = report.state
    if pod.failure is not None and state in (
        AgentState.UNREACHABLE,
        AgentState.LOADING,
        AgentState.FAILED,
    ):
        state = AgentState.FAILED  # kubelet saw vLLM exit: the agent cannot know why
    if running is not None and state not in TRANSITIONING:
        # Our own request is in flight and the agent's report predates it (or its end).
        if running is Transition.SLEEP and state == AgentState.AWAKE:
            state = AgentState.SLEEPING
        elif running is Transition.WAKE and state == AgentState.ASLEEP:
            state = AgentState.WAKING
    return ReplicaObservation(
        # The pod's own facts, then its agent's.
        pod=pod.name,
        routed=pod.routed,
        deleting=pod.deleting,
        agent=state,
        inflight=report.inflight,
        held=report.held,
        last_activity=report.last_activity,
        wake_grant=report.wake_on_request,
    )


def replica_memory(pod: ObservedPod, report: StateReport) -> ReplicaMemory:
    mem = pod.memory
    if report.state == AgentState.ASLEEP:
        # Asleep since at least the agent's `since`: the annotation of this sleep may not have
        # reached the pod cache yet (it is written alongside the agent call), and an older one
        # would make demand that the sleep already answered look newer than it. Without any
        # annotation (slept by a previous operator that died, or by hand) the agent's clock is
        # all there is; either way it needs no pre-warm.
        known = [t for t in (mem.slept_at, report.since) if t is not None]
        slept_at = max(known) if known else None
        return ReplicaMemory(woken_at=mem.woken_at, slept_at=slept_at, prewarmed=True)
    if not mem.prewarmed and slept_before(mem, report):
        mem = replace(mem, prewarmed=True)  # its pre-warm is done, memory written or not
    # Awake by its agent's own wake (granted by the sleep): a wake from its start, for
    # minAwake and the idle timer, before its annotation is written.
    return memory_with_agent_wake(mem, report)


def _spec_hash(manifest: Manifest) -> str | None:
    annotations: Mapping[str, str] = manifest["metadata"].get("annotations") or {}
    return annotations.get(ANNOTATION_SPEC_HASH)
