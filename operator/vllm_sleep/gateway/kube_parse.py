"""Pure translation of Kubernetes objects (plain dicts from the API) into router input."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from vllm_sleep.api.duration import DurationError
from vllm_sleep.api.duration import parse_duration as go_duration
from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL

from .routing import ModelKey, ModelSpec, PodState, WakePolicy


def parse_duration(value: object) -> float | None:
    """Seconds from a Go duration ("120s", "1m30s", "500ms") or a number of seconds; None
    when unusable.

    Read with api.duration, as the operator reads the same field (the agent's --hold-timeout
    comes from it): the gateway's own narrower parser read forms the CRD admits (".5m", "µs")
    as unusable, and the wake deadline silently fell back to its default.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value > 0 else None
    if not isinstance(value, str) or not value:
        return None
    try:
        seconds = go_duration(value).total_seconds()
    except OverflowError:  # past timedelta's range: must not escape (the watch would relist)
        seconds = timedelta.max.total_seconds()  # "forever", as near as it can be said
    except DurationError:
        try:
            seconds = float(value)  # a bare number of seconds
        except ValueError:
            return None
    return seconds if seconds > 0 else None


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
    return PodState(meta["namespace"], meta["name"], model, url, awake, can_hold)


def model_spec(obj: Mapping[str, Any], defaults: WakePolicy) -> ModelSpec | None:
    """A ModelDeployment as the router needs it; invalid wake fields fall back to defaults."""
    meta = obj.get("metadata") or {}
    name, namespace = meta.get("name"), meta.get("namespace")
    if not name or not namespace:
        return None
    spec = obj.get("spec") or {}
    wake = spec.get("wake") or {}
    served = spec.get("servedModelName")
    on_request = wake.get("onRequest")
    max_queued = wake.get("maxQueued")
    policy = WakePolicy(
        on_request=on_request if isinstance(on_request, bool) else defaults.on_request,
        timeout=parse_duration(wake.get("timeout")) or defaults.timeout,
        max_queued=max_queued
        if isinstance(max_queued, int) and not isinstance(max_queued, bool) and max_queued >= 0
        else defaults.max_queued,
    )
    phase = (obj.get("status") or {}).get("phase") or "Pending"
    return ModelSpec(
        key=ModelKey(namespace, name),
        served_name=served if isinstance(served, str) and served else name,
        phase=str(phase),
        wake=policy,
        uid=str(meta.get("uid") or ""),
        created=_unix(meta.get("creationTimestamp")),
    )


def _unix(stamp: object) -> int:
    if not isinstance(stamp, str):
        return 0
    try:
        return int(datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0
