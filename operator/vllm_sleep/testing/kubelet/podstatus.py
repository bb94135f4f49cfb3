"""Pod status as kubelet computes it, from what the simulated containers are doing. Pure.

Ready = every container ready AND every readiness gate's condition True (kubelet's rule; the
gate conditions are written by someone else, here the operator, and merged by type). Status is
sent as a strategic-merge patch that never mentions gate conditions, so it cannot clobber them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class ContainerView:
    name: str
    image: str
    sidecar: bool = False  # init container with restartPolicy Always
    init: bool = False  # init container (sidecar or not)
    running: bool = False
    ready: bool = False
    started_at: str | None = None
    restart_count: int = 0
    waiting_reason: str | None = None
    waiting_message: str | None = None
    terminated: dict[str, Any] | None = None  # state.terminated for a finished init container
    last_terminated: dict[str, Any] | None = None
    container_id: str = ""

    def status(self) -> dict[str, Any]:
        if self.running:
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.terminated is not None:
            state = {"terminated": self.terminated}
        else:
            state = {"waiting": {"reason": self.waiting_reason or "ContainerCreating"}}
            if self.waiting_message:
                state["waiting"]["message"] = self.waiting_message
        out: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": f"sim://{self.image}",
            "containerID": self.container_id,
            "ready": self.ready,
            "started": self.running,
            "restartCount": self.restart_count,
            "state": state,
            "lastState": {"terminated": self.last_terminated} if self.last_terminated else {},
        }
        return out


@dataclass
class PodView:
    pod_ip: str | None
    host_ip: str
    start_time: str
    containers: list[ContainerView] = field(default_factory=list)
    init_containers: list[ContainerView] = field(default_factory=list)


def _condition(ctype: str, ok: bool, now: str, reason: str | None = None) -> dict[str, Any]:
    cond: dict[str, Any] = {
        "type": ctype,
        "status": "True" if ok else "False",
        "lastProbeTime": None,
    }
    cond["lastTransitionTime"] = now
    if reason and not ok:
        cond["reason"] = reason
    return cond


def gates_open(pod: dict[str, Any]) -> bool:
    gates = [g.get("conditionType") for g in (pod.get("spec", {}).get("readinessGates") or [])]
    conds = {
        c.get("type"): c.get("status") for c in (pod.get("status", {}).get("conditions") or [])
    }
    return all(conds.get(g) == "True" for g in gates)


def compute(pod: dict[str, Any], view: PodView, now: str) -> dict[str, Any]:
    """The status patch for `pod` given what its containers do."""
    inits_done = all(
        c.running if c.sidecar else c.terminated is not None for c in view.init_containers
    )
    all_containers = [c for c in view.init_containers if c.sidecar] + view.containers
    containers_ready = inits_done and all(c.ready for c in all_containers)
    ready = containers_ready and gates_open(pod)
    any_running = any(c.running for c in all_containers)
    previous = {c.get("type"): c for c in (pod.get("status", {}).get("conditions") or [])}

    def cond(ctype: str, ok: bool, reason: str | None = None) -> dict[str, Any]:
        old = previous.get(ctype)
        fresh = _condition(ctype, ok, now, reason)
        # Keep the transition time when the status did not change, as kubelet does.
        if old and old.get("status") == fresh["status"]:
            fresh["lastTransitionTime"] = old.get("lastTransitionTime", now)
        return fresh

    not_ready_reason = "ContainersNotReady" if not containers_ready else "ReadinessGatesNotReady"
    conditions = [
        cond("PodReadyToStartContainers", view.pod_ip is not None),
        cond("Initialized", inits_done, "ContainersNotInitialized"),
        cond("ContainersReady", containers_ready, "ContainersNotReady"),
        cond("Ready", ready, not_ready_reason),
    ]
    status: dict[str, Any] = {
        "phase": "Running" if any_running else "Pending",
        "hostIP": view.host_ip,
        "hostIPs": [{"ip": view.host_ip}],
        "startTime": view.start_time,
        "conditions": conditions,
        "containerStatuses": [c.status() for c in view.containers],
    }
    if view.init_containers:
        status["initContainerStatuses"] = [c.status() for c in view.init_containers]
    if view.pod_ip:
        status["podIP"] = view.pod_ip
        status["podIPs"] = [{"ip": view.pod_ip}]
    return status


def comparable(status: dict[str, Any]) -> dict[str, Any]:
    """The parts of a status that matter for deciding whether to write it again."""
    return {
        "phase": status.get("phase"),
        "podIP": status.get("podIP"),
        "conditions": [(c["type"], c["status"]) for c in status.get("conditions", [])],
        "containers": [
            (c["name"], c["ready"], c["restartCount"], _state_key(c["state"]))
            for c in status.get("containerStatuses", []) + status.get("initContainerStatuses", [])
        ],
    }


def _state_key(state: dict[str, Any]) -> tuple[str, str | None]:
    """The container state's kind and reason: a new waiting reason must be written too."""
    kind = next(iter(state), "")
    return kind, (state.get(kind) or {}).get("reason")
