"""Pods on lost nodes: when the operator stops waiting for Kubernetes and replaces them. Pure.

When a node's kubelet stops reporting, Kubernetes marks the node `Ready=Unknown` (after the node
monitor's grace period, 50 s by default), taints it, and evicts its pods only after their
`tolerationSeconds` (300 s by default). Even then the pods stay `Terminating`: only the kubelet
that is gone could confirm their end. A model's pods have fixed names (`<model>-<replica>`), so
its replacement cannot even be created while the old object exists: the replica would be down
until someone deleted the Node or force-deleted the pod.

So the operator acts itself, the way a StatefulSet operator is told to: a pod whose node has not
been Ready for `bound` seconds, or whose Node object is gone, is force-deleted (grace 0) and
recreated elsewhere at once (a pooled replica is seated again on a device of a Ready node).
Safe for this workload: a replica holds no state, a partitioned node's engine can no longer be
routed to once its pod object is gone (every router follows the pod watch), and its GPU is that
node's, not the replacement's.

Only pods whose agent does not answer are checked (the controller looks their nodes up), so a
healthy fleet costs no Node reads; a pod seated by a pool but not yet bound counts as being on
its seat's node.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from ..api.agent_protocol import AgentState, StateReport
from ..api.demand import parse_micro_time
from .observe import ObservedPod

NODE_LOST_SECONDS: Final = 60.0  # not Ready for this long: the node's pods are replaced
# At least this share of the cluster's nodes not Ready: a disruption, nothing is replaced.
DISRUPTION_SHARE: Final = 0.55


@dataclass(frozen=True)
class NodeHealth:
    exists: bool
    ready: str | None = None  # the Ready condition's status: "True", "False", "Unknown"
    since: float | None = None  # unix seconds of its last transition
    reason: str | None = None


GONE: Final = NodeHealth(exists=False)


def node_health(node: Mapping[str, Any] | None) -> NodeHealth:
    """A Node object as the rule reads it (None: it does not exist)."""
    if node is None or (node.get("metadata") or {}).get("deletionTimestamp"):
        return GONE
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return NodeHealth(
                exists=True,
                ready=str(c.get("status")),
                since=parse_micro_time(c.get("lastTransitionTime")),
                reason=c.get("reason") or None,
            )
    return NodeHealth(exists=True)  # a node registering: no condition yet


def not_ready(node: Mapping[str, Any]) -> bool:
    """The node says it is not Ready (False or Unknown): it takes no new pods, so a GPUPool
    counts no devices on it (`pool_devices`) and seats nothing there."""
    health = node_health(node)
    return health.exists and health.ready is not None and health.ready != "True"


def disrupted(nodes: Iterable[Mapping[str, Any]]) -> bool:
    """Whether so many nodes are not Ready that the fault is more likely the control plane's or
    the network's than the nodes' (kube-controller-manager's node lifecycle controller reasons
    the same way: it slows evictions when 55 % of a zone is unhealthy and stops them when all of
    it is). Replacing pods then would only churn: the replacements have nowhere better to go."""
    listed = list(nodes)
    down = sum(1 for n in listed if not_ready(n) or node_health(n).ready is None)
    return bool(listed) and down >= DISRUPTION_SHARE * len(listed)


def node_name(pod: ObservedPod) -> str | None:
    """The node a pod runs on, or is seated on by its pool before the scheduler bound it."""
    if pod.node:
        return pod.node
    return pod.device.partition("/")[0] if pod.device else None  # "<node>/<name>"


def nodes_to_check(
    pods: Iterable[ObservedPod],
    reports: Mapping[str, StateReport],
    now: float | None = None,
    bound: float = NODE_LOST_SECONDS,
) -> set[str]:
    """The nodes worth a look: those of live pods whose agent does not answer (a pod bound to
    a node whose kubelet is gone stays Pending, or Running, or Terminating, forever), once
    the pod is `bound` seconds old (`now`: unix seconds; None checks every age).

    A younger pod's node cannot have been not Ready for `bound` yet: the scheduler binds no pod
    to a node that is not Ready (and a pool seats none there), and a node that stops reporting
    turns not Ready only after the node monitor's grace. So a fleet starting up, every agent
    silent while its engine loads, reads no Node; a node deleted outright under a new pod is
    noticed once the pod is `bound` old (the next pass after that: a resync at the latest)."""
    out: set[str] = set()
    for pod in pods:
        name = node_name(pod)
        if name and _silent(pod, reports) and _young_for(pod, now, bound) is None:
            out.add(name)
    return out


def silent_young_in(
    pods: Iterable[ObservedPod], reports: Mapping[str, StateReport], now: float, bound: float
) -> float | None:
    """Seconds until the first silent pod too young for `nodes_to_check` is old enough (None:
    none): the pass then looks at its node, instead of waiting for the next resync."""
    waits = [
        left
        for pod in pods
        if node_name(pod) and _silent(pod, reports)
        for left in [_young_for(pod, now, bound)]
        if left is not None
    ]
    return min(waits) if waits else None


def _silent(pod: ObservedPod, reports: Mapping[str, StateReport]) -> bool:
    report = reports.get(pod.name)
    return not pod.ended and (report is None or report.state is AgentState.UNREACHABLE)


def _young_for(pod: ObservedPod, now: float | None, bound: float) -> float | None:
    """Seconds until `pod` is `bound` old, while it is younger (None: it is not, or unknown)."""
    if now is None or pod.created is None:
        return None
    left = pod.created + bound - now
    return left if left > 0 else None


def lost(
    pod: ObservedPod,
    nodes: Mapping[str, NodeHealth],
    now: float,
    bound: float = NODE_LOST_SECONDS,
) -> str | None:
    """Why `pod` is lost with its node (an Event's message), or None.

    A node not looked up (absent from `nodes`) is presumed fine; a Ready condition without a
    transition time starts no clock."""
    name = node_name(pod)
    health = nodes.get(name) if name else None
    if name is None or health is None:
        return None
    if not health.exists:
        return f"{pod.name}: node {name} no longer exists; replacing the pod"
    if health.ready == "True" or health.since is None:
        return None
    down = now - health.since
    if down < bound:
        return None
    why = f" ({health.reason})" if health.reason else ""
    return (
        f"{pod.name}: node {name} has been Ready={health.ready}{why} for {down:.0f}s "
        f"(bound {bound:.0f}s); force-deleting the pod to replace it"
    )


def recheck_in(
    pods: list[ObservedPod], nodes: Mapping[str, NodeHealth], now: float, bound: float
) -> float | None:
    """Seconds until a pod on a node that is not Ready would pass the bound (None: none)."""
    waits = []
    for pod in pods:
        name = node_name(pod)
        health = nodes.get(name) if name else None
        if health is not None and health.exists and health.ready != "True" and health.since:
            left = health.since + bound - now
            if left > 0:
                waits.append(left)
    return min(waits) if waits else None
