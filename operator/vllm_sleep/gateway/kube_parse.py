"""Pure translation of Kubernetes objects (plain dicts from the API) into router input.

ModelDeployments are read with `api.model_deployment.ModelDeployment`, as the operator reads
them: one set of defaults and one duration grammar for both.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from vllm_sleep.api.demand import parse_micro_time
from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.api.model_status import ConditionReason, ConditionType, ModelPhase
from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL
from vllm_sleep.api.vllm_args import max_model_len

from .routing import CannotWake, ModelKey, ModelSpec, PodState, WakePolicy

log = logging.getLogger(__name__)


def _conditions(status: Mapping[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    for c in status.get("conditions") or ():
        if isinstance(c, Mapping) and isinstance(c.get("type"), str):
            out[c["type"]] = str(c.get("status"))
    return out


def pod_state(pod: Mapping[str, Any], port: int) -> PodState | None:
    """The router's view of a model pod; None when it is not a model pod at all."""
    meta = pod.get("metadata") or {}
    model = (meta.get("labels") or {}).get(LABEL_MODEL)
    if not model or not meta.get("name") or not meta.get("namespace"):
        return None
    status = pod.get("status") or {}
    ip = status.get("podIP") or ""
    conds = _conditions(status)
    # Ready = ContainersReady and every readiness gate; the pod's only gate is the awake
    # condition, checked here directly. Reading ContainersReady rather than Ready routes the
    # moment the operator marks the pod awake, not one kubelet status round trip later (the
    # kubelet folds the gate into Ready only after it sees the condition). Ready is the fallback
    # for a status without ContainersReady.
    containers_ready = conds.get("ContainersReady", conds.get("Ready"))
    loaded = (
        bool(ip)
        and not meta.get("deletionTimestamp")  # terminating pods take no new requests
        and status.get("phase") == "Running"
        and containers_ready == "True"  # agent and engine loaded (vLLM /health is 200 asleep)
    )
    awake = loaded and conds.get(CONDITION_AWAKE) == "True"
    # Asleep, waking or draining, as the operator marked it: the agent holds inference
    # requests until its engine is awake. No condition yet (just loaded, before the operator's
    # first pass) is left to the gateway's own queue.
    can_hold = loaded and conds.get(CONDITION_AWAKE) == "False"
    host = f"[{ip}]" if ":" in ip else ip
    url = f"http://{host}:{port}" if ip else ""
    return PodState(meta["namespace"], meta["name"], model, url, awake, can_hold, up=loaded)


def model_key(obj: Mapping[str, Any]) -> ModelKey | None:
    """Which ModelDeployment an object is, valid or not (a deletion needs no valid spec)."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str) or not isinstance(namespace, str) or not name or not namespace:
        return None
    return ModelKey(namespace, name)


def model_spec(obj: Mapping[str, Any]) -> ModelSpec | None:
    """A ModelDeployment as the router needs it, read with the operator's own model (its
    defaults and duration grammar); None, logged, when the object does not validate."""
    key = model_key(obj)
    if key is None:
        return None
    try:
        md = ModelDeployment.from_body(dict(obj))
    except ValidationError as e:
        log.warning(
            "ModelDeployment %s/%s skipped: it does not validate (%d errors): %s",
            key.namespace,
            key.name,
            e.error_count(),
            "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()),
        )
        return None
    wake = md.spec.wake
    status = md.status
    phase = status.phase if status is not None and status.phase is not None else None
    meta = obj.get("metadata") or {}
    return ModelSpec(
        key=key,
        served_name=md.served_model_name,
        phase=phase.value if phase is not None else "Pending",
        wake=WakePolicy.from_spec(wake),
        uid=md.metadata.uid or "",
        created=_unix(meta.get("creationTimestamp")),
        cannot_wake=cannot_wake(md),
        root=md.spec.model,
        max_model_len=max_model_len(md.spec.args),
    )


# Phases in which nothing loads, wakes or runs: any other one may be about to serve.
_IDLE = frozenset({ModelPhase.PENDING, ModelPhase.ASLEEP})


def cannot_wake(md: ModelDeployment) -> CannotWake | None:
    """Why no wake can serve this model, when its status says so for its current spec.

    Only these states qualify (docs/api.md, the condition reasons of api.model_status).
    `spec.replicas` 0 (Ready=False, ScaledToZero): nothing is loaded. A placement problem of the
    whole model (Scheduled=False, NoPlacement: its GPUPool does not exist or is invalid, or its
    spec cannot run in a pool): the operator places and wakes no replica, so a sleeping pod
    whose agent could hold the request is no reason to hold it either (`whole_model`). A
    replica's placement problem (Scheduled=False, CannotPlace: its pool has no devices, none it
    fits on): refused only where no pod can hold, since the model's placed replicas still wake.
    The Kubernetes scheduler's Unschedulable (a node may come) and WaitingForDevice (a full
    pool: the model's turn comes) are not. Anything uncertain holds, as before: no status, a
    status of an older generation (just scaled up, the operator has not written yet), a phase in
    which a replica loads, wakes or runs.
    """
    status = md.status
    generation = md.metadata.generation
    if status is None or generation is None or status.observed_generation != generation:
        return None
    if status.phase not in _IDLE:
        return None
    conds = {c.type: c for c in status.conditions}
    ready = conds.get(ConditionType.READY)
    if (
        md.spec.replicas == 0
        and ready is not None
        and (ready.status, ready.reason) == ("False", ConditionReason.SCALED_TO_ZERO)
    ):
        return CannotWake(ConditionReason.SCALED_TO_ZERO, "it has 0 replicas (spec.replicas is 0)")
    scheduled = conds.get(ConditionType.SCHEDULED)
    if scheduled is None or scheduled.status != "False" or not scheduled.message:
        return None
    if scheduled.reason == ConditionReason.NO_PLACEMENT:
        return CannotWake(ConditionReason.NO_PLACEMENT, scheduled.message, whole_model=True)
    if scheduled.reason == ConditionReason.CANNOT_PLACE:
        return CannotWake(ConditionReason.CANNOT_PLACE, scheduled.message)
    return None


def _unix(stamp: object) -> int:
    """Whole unix seconds of a creationTimestamp; 0 (unknown) when absent or unreadable."""
    return int(parse_micro_time(stamp) or 0)
