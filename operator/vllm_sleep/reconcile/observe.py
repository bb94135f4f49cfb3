"""A model pod as the plan sees it: a frozen value read from the pod's JSON. Pure.

Everything the operator needs from a pod is read here once, so the plan (`reconcile.plan`) and
the status (`reconcile.status`) never index raw dicts. Three sources meet on a pod:

- its shape and placement (replica label, spec-hash annotation, phase, node, IP);
- the operator's per-replica memory, kept as annotations so it dies with the pod (a
  replacement must pre-warm again) and survives an operator restart (docs/operator.md);
- what kubelet knows that the agent cannot: the vLLM container's restarts and the termination
  message (its log tail, via `terminationMessagePolicy: FallbackToLogsOnError`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..api.demand import parse_micro_time
from ..api.names import (
    ANNOTATION_DEVICE,
    ANNOTATION_DEVICE_BYTES,
    ANNOTATION_SPEC_HASH,
    CONDITION_AWAKE,
    CONTAINER_VLLM,
    GROUP,
    LABEL_REPLICA,
)
from .lifecycle import ReplicaMemory

# The operator's per-replica memory (annotations on the pod).
ANNOTATION_WOKEN_AT: Final = f"{GROUP}/woken-at"  # unix seconds the last wake started
ANNOTATION_SLEPT_AT: Final = f"{GROUP}/slept-at"  # unix seconds the last sleep started
ANNOTATION_PREWARMED: Final = f"{GROUP}/prewarmed"  # "true": the slow first sleep happened

MESSAGE_LIMIT: Final = 300  # status and Events stay readable; the pod keeps the full text
ENDED_PHASES: Final = frozenset({"Succeeded", "Failed"})  # a pod in these never runs again


@dataclass(frozen=True)
class EngineFailure:
    restarts: int
    reason: str


@dataclass(frozen=True)
class ObservedPod:
    name: str
    uid: str | None
    replica: int  # the replica label; -1 when missing or not a number (never desired)
    spec_hash: str | None
    phase: str | None  # the pod's phase: Pending, Running, Succeeded, Failed
    deleting: bool  # deletionTimestamp set: shown in status, never acted on
    ip: str | None
    node: str | None
    routed: bool  # the readiness gate (vllm-sleep.io/awake) is True
    memory: ReplicaMemory
    failure: EngineFailure | None = None
    unscheduled: str | None = None  # the scheduler's PodScheduled=False message
    device: str | None = None  # pooled pods: the GPU the pool scheduler seated it on
    device_bytes: int | None = None  # pooled pods: the share it was built with
    created: float | None = None  # unix seconds of its creationTimestamp

    @property
    def ended(self) -> bool:
        return self.phase in ENDED_PHASES


def observe_pod(pod: Mapping[str, Any]) -> ObservedPod:
    meta: Mapping[str, Any] = pod.get("metadata") or {}
    status: Mapping[str, Any] = pod.get("status") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    conditions: list[Mapping[str, Any]] = status.get("conditions") or []
    return ObservedPod(
        name=str(meta.get("name", "")),
        uid=meta.get("uid"),
        replica=_int((meta.get("labels") or {}).get(LABEL_REPLICA)),
        spec_hash=annotations.get(ANNOTATION_SPEC_HASH),
        phase=status.get("phase"),
        deleting=bool(meta.get("deletionTimestamp")),
        ip=status.get("podIP") or None,
        node=(pod.get("spec") or {}).get("nodeName"),
        routed=any(
            c.get("type") == CONDITION_AWAKE and c.get("status") == "True" for c in conditions
        ),
        memory=ReplicaMemory(
            woken_at=_float(annotations.get(ANNOTATION_WOKEN_AT)),
            slept_at=_float(annotations.get(ANNOTATION_SLEPT_AT)),
            prewarmed=annotations.get(ANNOTATION_PREWARMED) == "true",
        ),
        failure=engine_failure(status),
        unscheduled=_unscheduled(str(meta.get("name", "")), conditions),
        device=annotations.get(ANNOTATION_DEVICE) or None,
        device_bytes=_positive_int(annotations.get(ANNOTATION_DEVICE_BYTES)),
        created=parse_micro_time(meta.get("creationTimestamp")),
    )


def engine_failure(status: Mapping[str, Any]) -> EngineFailure | None:
    """The vLLM container restarted and is not (yet) ready again: it is failing."""
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != CONTAINER_VLLM:
            continue
        restarts = int(cs.get("restartCount") or 0)
        last = (cs.get("lastState") or {}).get("terminated")
        if restarts == 0 or cs.get("ready") or not last:
            return None
        waiting = (cs.get("state") or {}).get("waiting") or {}
        text = (last.get("message") or "").strip().splitlines()
        detail = text[-1] if text else f"exit code {last.get('exitCode')} ({last.get('reason')})"
        how = "is crash-looping" if waiting.get("reason") == "CrashLoopBackOff" else "restarted"
        plural = "" if restarts == 1 else "s"
        reason = f"vLLM {how} ({restarts} restart{plural}): {detail}"
        return EngineFailure(restarts, reason[:MESSAGE_LIMIT])
    return None


def memory_patch(
    woken_at: float | None = None, slept_at: float | None = None, prewarmed: bool | None = None
) -> dict[str, str | None]:
    """The annotations that record a transition on its pod (a merge patch)."""
    patch: dict[str, str | None] = {}
    if woken_at is not None:
        patch[ANNOTATION_WOKEN_AT] = f"{woken_at:.3f}"
    if slept_at is not None:
        patch[ANNOTATION_SLEPT_AT] = f"{slept_at:.3f}"
    if prewarmed is not None:
        patch[ANNOTATION_PREWARMED] = "true" if prewarmed else "false"
    return patch


def _unscheduled(name: str, conditions: list[Mapping[str, Any]]) -> str | None:
    for c in conditions:
        if c.get("type") == "PodScheduled" and c.get("status") == "False":
            return f"{name}: {c.get('message') or c.get('reason')}"
    return None


def _int(value: object) -> int:
    try:
        return int(str(value))
    except ValueError:
        return -1


def _positive_int(value: str | None) -> int | None:
    """A count of bytes someone may have edited: anything but a positive integer is unknown."""
    number = _int(value) if value is not None else -1
    return number if number > 0 else None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
