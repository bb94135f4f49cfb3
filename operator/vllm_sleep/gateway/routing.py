"""The gateway's pure core: model table, replica choice, hold-queue and demand accounting.

No I/O and no clock: the server feeds it watch events and the current time. Everything a request
needs to decide (route, hold, refuse) is answered here in O(replicas of one model), so the data
path never scans the whole cluster; a watch event likewise costs the one model (and served name)
it changes, never the fleet. Tested with hypothesis in tests/unit/gateway.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..api.model_spec import WakeSpec
from ..api.served_names import Claim, ExposurePolicy, Refusal, RefusalReason, resolve

_WAKE = WakeSpec()  # the API's defaults, which the apiserver fills in too
DEFAULT_WAKE_TIMEOUT = _WAKE.timeout.total_seconds()
DEFAULT_MAX_QUEUED = _WAKE.max_queued


@dataclass(frozen=True, order=True)
class ModelKey:
    """A ModelDeployment: the unit of pods, demand Leases and hold queues."""

    namespace: str
    name: str


@dataclass(frozen=True)
class WakePolicy:
    """`spec.wake` in the units the router counts in (seconds, requests)."""

    on_request: bool = _WAKE.on_request
    timeout: float = DEFAULT_WAKE_TIMEOUT
    max_queued: int = DEFAULT_MAX_QUEUED  # held for the model in this gateway process

    @classmethod
    def from_spec(cls, wake: WakeSpec) -> WakePolicy:
        return cls(wake.on_request, wake.timeout.total_seconds(), wake.max_queued)


@dataclass(frozen=True)
class CannotWake:
    """The operator reports, for the model's current spec, that no wake can serve it (e.g.
    `spec.replicas` is 0, or its GPUPool has no device it could ever be placed on)."""

    reason: str  # the operator's condition reason (docs/api.md)
    message: str  # what the client is told, quoting the operator
    # The problem is the whole model's (NoPlacement: no replica is placed or woken): a pod whose
    # agent could hold the request is no reason to hold it, and a held request is answered too.
    whole_model: bool = False


@dataclass(frozen=True)
class ModelSpec:
    key: ModelKey
    served_name: str  # what clients send as "model"
    phase: str = "Unknown"  # status.phase, shown in /v1/models
    wake: WakePolicy = field(default_factory=WakePolicy)
    uid: str = ""  # owner of the demand Lease
    created: int = 0  # unix seconds, for /v1/models
    # Set: a request no replica is awake for or can hold (whatever the pods, when the problem
    # is the whole model's) is refused at once, not held.
    cannot_wake: CannotWake | None = None
    # For /v1/models, as vLLM reports them: what it loads (`spec.model`), and its context
    # length when the spec says it (`--max-model-len` in its args); None: unknown here.
    root: str = ""
    max_model_len: int | None = None


@dataclass(frozen=True)
class PodState:
    """One model pod as the router needs it; `awake` already folds condition, Ready, deletion.

    `can_hold`: not awake, but its agent is up and would hold an inference request until the
    engine is awake (never forwarding it to a sleeping engine). Such a pod is a target for a
    request that would otherwise wait in the gateway's queue: the agent releases it the moment
    its engine is confirmed awake, without the condition -> pod watch round trip.

    `up`: its agent and engine are loaded (Running, containers ready, an IP, not terminating),
    whatever its sleep state: vLLM's frontend answers the per-pod utilities (/tokenize, ...)
    asleep or awake. An awake or holding pod is up whatever this says.
    """

    namespace: str
    name: str
    model: str  # ModelDeployment name (label vllm-sleep.io/model)
    url: str  # http://<podIP>:8000, "" when the pod has no IP yet
    awake: bool
    can_hold: bool = False
    up: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class Replica:
    pod: tuple[str, str]  # (namespace, name)
    url: str


@dataclass
class _Model:
    spec: ModelSpec | None = None
    pods: dict[tuple[str, str], PodState] = field(default_factory=dict)
    queued: int = 0
    last_demand: float | None = None
    awake: tuple[Replica, ...] | None = None  # cache of the awake replicas; None = stale


def _claim(spec: ModelSpec) -> Claim:
    return Claim(spec.key.namespace, spec.key.name, spec.served_name, spec.created or None)


class ModelTable:
    """Models, their pods, in-flight counts per pod and held requests per model."""

    def __init__(self, exposure: ExposurePolicy | None = None) -> None:
        self._models: dict[ModelKey, _Model] = {}
        self._served: dict[str, ModelKey] = {}
        self._claims: dict[str, dict[ModelKey, Claim]] = {}  # served name -> its claims
        self._pod_model: dict[tuple[str, str], ModelKey] = {}  # pod -> the model it serves
        self._exposure = exposure or ExposurePolicy()
        # ModelDeployments that serve nothing, and why (api.served_names: an older owner of
        # the name, or the exposure policy).
        self.refused: dict[ModelKey, Refusal] = {}
        self._inflight: dict[tuple[str, str], int] = {}
        self._turn = 0  # rotates among equally loaded replicas

    # -- watch input ---------------------------------------------------------------------------

    def upsert_model(self, spec: ModelSpec) -> set[ModelKey]:
        """Returns the models whose refusal may have changed (see `_resolve_names`)."""
        entry = self._models.setdefault(spec.key, _Model())
        old, entry.spec = entry.spec, spec
        if old is not None and (old.served_name, old.created) == (spec.served_name, spec.created):
            return set()  # same claim (most events are status writes): the same answer
        return self._reclaim(spec.key, old, spec)

    def remove_model(self, key: ModelKey) -> set[ModelKey]:
        entry = self._models.get(key)
        if entry is None or entry.spec is None:
            self._gc(key)
            return set()
        old, entry.spec = entry.spec, None
        self._gc(key)
        return self._reclaim(key, old, None)

    def upsert_pod(self, pod: PodState) -> ModelKey:
        key = ModelKey(pod.namespace, pod.model)
        moved = self._pod_model.get(pod.key)
        if moved is not None and moved != key:
            self._drop_pod(moved, pod.key)  # relabelled: it no longer serves the old model
        self._pod_model[pod.key] = key
        entry = self._models.setdefault(key, _Model())
        entry.pods[pod.key] = pod
        entry.awake = None
        if pod.awake and pod.url:
            # The demand was answered: the next time the model sleeps and a request waits,
            # it must signal at once rather than wait out the throttle interval.
            entry.last_demand = None
        return key

    def remove_pod(self, namespace: str, name: str) -> ModelKey | None:
        key = self._pod_model.pop((namespace, name), None)
        if key is not None:
            self._drop_pod(key, (namespace, name))
        return key

    def _drop_pod(self, key: ModelKey, pod: tuple[str, str]) -> None:
        entry = self._models.get(key)
        if entry is not None and entry.pods.pop(pod, None) is not None:
            entry.awake = None
            self._gc(key)

    def replace_all(
        self, specs: Iterable[ModelSpec] | None, pods: Iterable[PodState] | None
    ) -> None:
        """A relist: the given kind's state is replaced wholesale (None leaves it alone)."""
        if specs is not None:
            fresh = {s.key: s for s in specs}
            for key, entry in list(self._models.items()):
                entry.spec = fresh.pop(key, None)
                self._gc(key)
            for spec in fresh.values():
                self._models.setdefault(spec.key, _Model()).spec = spec
            self._reindex()
        if pods is not None:
            for entry in self._models.values():
                entry.pods.clear()
                entry.awake = None
            self._pod_model.clear()
            for pod in pods:
                self.upsert_pod(pod)
            for key in list(self._models):
                self._gc(key)

    def _gc(self, key: ModelKey) -> None:
        entry = self._models.get(key)
        if entry is not None and entry.spec is None and not entry.pods and entry.queued == 0:
            del self._models[key]

    # The rule is api.served_names' (the operator reports the same refusals as conditions). It
    # decides each served name from that name's claims alone, so a watch event re-resolves only
    # the names it touches: re-resolving every claim per event made a bring-up O(models^2).

    def _reindex(self) -> None:
        """Every claim at once (a relist)."""
        self._claims = {}
        for key, entry in self._models.items():
            if entry.spec is not None:
                self._claims.setdefault(entry.spec.served_name, {})[key] = _claim(entry.spec)
        resolution = resolve(
            (c for claims in self._claims.values() for c in claims.values()), self._exposure
        )
        self._served = {
            served: ModelKey(c.namespace, c.name) for served, c in resolution.owners.items()
        }
        self.refused = {ModelKey(*key): r for key, r in resolution.refused.items()}

    def _reclaim(
        self, key: ModelKey, old: ModelSpec | None, new: ModelSpec | None
    ) -> set[ModelKey]:
        names: set[str] = set()
        if old is not None:
            names.add(old.served_name)
            claims = self._claims.get(old.served_name)
            if claims is not None:
                claims.pop(key, None)
        if new is not None:
            names.add(new.served_name)
            self._claims.setdefault(new.served_name, {})[key] = _claim(new)
        return self._resolve_names(names, key)

    def _resolve_names(self, names: Iterable[str], changed: ModelKey) -> set[ModelKey]:
        """Re-decide these served names from their claims; returns every claimant's key (and
        `changed`, which may have left them), the only refusals this can have changed."""
        touched = {changed}
        self.refused.pop(changed, None)
        for served in names:
            claims = self._claims.get(served) or {}
            for key in claims:
                self.refused.pop(key, None)
            touched.update(claims)
            self._served.pop(served, None)
            if not claims:
                self._claims.pop(served, None)
                continue
            resolution = resolve(claims.values(), self._exposure)
            for name, c in resolution.owners.items():
                self._served[name] = ModelKey(c.namespace, c.name)
            for k, r in resolution.refused.items():
                self.refused[ModelKey(*k)] = r
        return touched

    @property
    def conflicts(self) -> dict[ModelKey, ModelKey]:
        """Refused because an older ModelDeployment owns the name: refused -> owner."""
        return {
            key: ModelKey(*r.owner)
            for key, r in self.refused.items()
            if r.reason == RefusalReason.CONFLICT and r.owner is not None
        }

    # -- queries -------------------------------------------------------------------------------

    def lookup(self, served_name: str) -> ModelSpec | None:
        key = self._served.get(served_name)
        return None if key is None else self._models[key].spec

    def lookup_key(self, key: ModelKey) -> ModelSpec | None:
        entry = self._models.get(key)
        return None if entry is None else entry.spec

    def specs(self) -> list[ModelSpec]:
        return [self._models[k].spec for k in sorted(self._served.values())]  # type: ignore[misc]

    def awake_replicas(self, key: ModelKey) -> tuple[Replica, ...]:
        entry = self._models.get(key)
        if entry is None:
            return ()
        if entry.awake is None:  # rebuilt on the first request after a pod change
            entry.awake = tuple(
                Replica(p.key, p.url) for p in entry.pods.values() if p.awake and p.url
            )
        return entry.awake

    def holding_replicas(self, key: ModelKey) -> list[Replica]:
        """Pods whose agent can hold a request while the engine is not awake."""
        entry = self._models.get(key)
        if entry is None:
            return []
        return [
            Replica(p.key, p.url)
            for p in entry.pods.values()
            if p.can_hold and not p.awake and p.url
        ]

    def is_awake(self, key: ModelKey, pod: tuple[str, str]) -> bool:
        entry = self._models.get(key)
        state = None if entry is None else entry.pods.get(pod)
        return state is not None and state.awake and bool(state.url)

    def choose_holder(
        self, key: ModelKey, exclude: frozenset[tuple[str, str]] = frozenset()
    ) -> Replica | None:
        """Where a request waits when no replica is awake: least in-flight, then by name.

        Only asked when `choose` found no awake replica. No rotation: concurrent held requests
        spread by in-flight count alone, and every gateway replica orders ties the same way.
        """
        candidates = [r for r in self.holding_replicas(key) if r.pod not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (self._inflight.get(r.pod, 0), r.pod))

    def choose_up(
        self, key: ModelKey, exclude: frozenset[tuple[str, str]] = frozenset()
    ) -> Replica | None:
        """Where a per-pod utility (/tokenize, ...) goes: an awake replica (as `choose`), else
        any pod whose agent is up, asleep or not (least in flight, then by name). Such a
        request never waits and never asks for a wake: no replica up, None."""
        replica = self.choose(key, exclude)
        if replica is not None:
            return replica
        entry = self._models.get(key)
        if entry is None:
            return None
        candidates = [
            Replica(p.key, p.url)
            for p in entry.pods.values()
            if p.url and (p.up or p.can_hold) and p.key not in exclude
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (self._inflight.get(r.pod, 0), r.pod))

    def choose(
        self, key: ModelKey, exclude: frozenset[tuple[str, str]] = frozenset()
    ) -> Replica | None:
        """Least in-flight awake replica not in `exclude`; ties rotate."""
        awake = self.awake_replicas(key)
        candidates = [r for r in awake if r.pod not in exclude] if exclude else awake
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        low = min(self._inflight.get(r.pod, 0) for r in candidates)
        best = [r for r in candidates if self._inflight.get(r.pod, 0) == low]
        self._turn += 1
        return best[self._turn % len(best)]

    def inflight(self, pod: tuple[str, str]) -> int:
        return self._inflight.get(pod, 0)

    def acquire(self, replica: Replica) -> None:
        self._inflight[replica.pod] = self._inflight.get(replica.pod, 0) + 1

    def release(self, replica: Replica) -> None:
        left = self._inflight.get(replica.pod, 0) - 1
        if left > 0:
            self._inflight[replica.pod] = left
        else:
            self._inflight.pop(replica.pod, None)

    # -- hold queue ----------------------------------------------------------------------------

    def queued(self, key: ModelKey) -> int:
        entry = self._models.get(key)
        return 0 if entry is None else entry.queued

    def try_enqueue(self, key: ModelKey, limit: int) -> bool:
        entry = self._models.setdefault(key, _Model())
        if entry.queued >= limit:
            return False
        entry.queued += 1
        return True

    def requeue(self, key: ModelKey) -> None:
        """Back into the queue without the bound: a request admitted before (dispatch._Slot)."""
        self._models.setdefault(key, _Model()).queued += 1

    def dequeue(self, key: ModelKey) -> None:
        entry = self._models.get(key)
        if entry is not None and entry.queued > 0:
            entry.queued -= 1
            self._gc(key)

    def held_models(self) -> list[ModelKey]:
        return [k for k, e in self._models.items() if e.queued > 0]

    # -- demand throttle -----------------------------------------------------------------------

    def demand_due(self, key: ModelKey, now: float, interval: float) -> bool:
        """True (and recorded) when a held model should renew its demand Lease now.

        One signal per model per `interval` however many requests wait: the Lease write is
        the only API call the gateway makes, and it must not scale with traffic.
        """
        entry = self._models.get(key)
        if entry is None or entry.queued == 0:
            return False
        if entry.last_demand is not None and now - entry.last_demand < interval:
            return False
        entry.last_demand = now
        return True

    def demand_failed(self, key: ModelKey, now: float, interval: float, retry: float) -> None:
        """Make the next attempt due after `retry` seconds instead of a full interval."""
        entry = self._models.get(key)
        if entry is not None:
            entry.last_demand = now - interval + retry
