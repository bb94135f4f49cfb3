"""Leader election of operator replicas over one coordination.k8s.io/v1 Lease (docs/reliability.md).

Every replica is a candidate; the one whose identity is the Lease's holderIdentity acts, the
others wait. The edge (controller/leader.py) reads the Lease, asks `decide` what to write, and
writes it with the resourceVersion it read as a precondition: of two candidates racing for one
version, the apiserver lets exactly one through (409 Conflict for the other).

Time is judged the way client-go's leaderelection judges it, by local clocks only:
- a candidate counts a holder's leaseDurationSeconds from the moment *it* first saw the current
  version of the Lease (`Seen.since`), never from the renewTime another machine's clock wrote;
- the holder counts its renewDeadline from the moment it *sent* its last successful write
  (`leading_until`), and stops acting when that passes without a newer one.

Safety: the write the holder sent at `s` commits at the apiserver at `w >= s`; a candidate sees
that version at `o >= w` and may take over at `o + leaseDurationSeconds >= s + lease_duration`,
while the holder stopped at `s + renew_deadline`. `Timings` requires
`lease_duration > renew_deadline`, so a holder that cannot renew (partitioned, stalled) stops
before anyone may take its Lease; the difference (5 s by default) absorbs clock-rate drift and the
time the holder needs to exit. Only the holder's own timings matter: candidates read the duration
it wrote into the Lease.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal

from .demand import LEASE_API_VERSION, LEASE_KIND, micro_time

LEADER_LEASE_NAME: Final = "vllm-sleep-operator-leader"


@dataclass(frozen=True)
class Timings:
    """client-go's defaults: a 15 s lease, renewed every 2 s, given up 10 s after the last
    successful renewal was sent."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if min(self.lease_duration, self.renew_deadline, self.retry_period) <= 0:
            raise ValueError("leader election timings must be positive")
        if self.lease_duration <= self.renew_deadline:
            raise ValueError(
                "the lease duration must exceed the renew deadline, or a leader that cannot "
                "renew could still be acting when another replica takes its lease"
            )
        if self.renew_deadline <= self.retry_period:
            raise ValueError("the renew deadline must exceed the retry period (one retry at least)")

    @property
    def lease_seconds(self) -> int:
        """leaseDurationSeconds as written (an integer field): rounded up, never shorter."""
        return math.ceil(self.lease_duration)


@dataclass(frozen=True)
class LeaseRecord:
    """What a leader Lease's spec says; `holder` is "" when nobody holds it (released)."""

    holder: str = ""
    lease_seconds: int | None = None
    acquire_time: str | None = None
    transitions: int = 0

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> LeaseRecord:
        spec = spec or {}
        holder = spec.get("holderIdentity")
        seconds = spec.get("leaseDurationSeconds")
        acquired = spec.get("acquireTime")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=holder if isinstance(holder, str) else "",
            lease_seconds=seconds if isinstance(seconds, int) and seconds > 0 else None,
            acquire_time=acquired if isinstance(acquired, str) else None,
            transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
        )


@dataclass(frozen=True)
class Seen:
    """The Lease as this replica last read it, and when (local monotonic seconds) it first saw
    that version."""

    resource_version: str
    record: LeaseRecord
    since: float


def see(previous: Seen | None, resource_version: str, record: LeaseRecord, now: float) -> Seen:
    """Fold one read into what was seen: the same version keeps the time it was first seen."""
    if previous is not None and previous.resource_version == resource_version:
        return previous
    return Seen(resource_version, record, now)


Action = Literal["create", "take", "renew", "wait"]


@dataclass(frozen=True)
class Decision:
    action: Action
    spec: dict[str, Any] | None  # the Lease spec to write; None when waiting
    wait: float  # seconds until the next attempt when waiting


def expires_at(seen: Seen, timings: Timings) -> float:
    """When (local monotonic) a candidate may take the Lease if its version does not change.

    The holder's own duration counts when it wrote one; ours only for a Lease without it.
    """
    seconds = seen.record.lease_seconds or timings.lease_seconds
    return seen.since + seconds


def decide(me: str, seen: Seen | None, now: float, wall: datetime, timings: Timings) -> Decision:
    """What replica `me` writes after reading the Lease (`seen`, None when it does not exist).

    `now` is local monotonic time, `wall` the wall-clock time written into acquire/renewTime
    (informational: no replica trusts another's wall clock).
    """
    if not me:
        raise ValueError("a candidate needs an identity")
    if seen is None:
        return Decision("create", _spec(me, wall, wall, 0, timings), 0.0)
    record = seen.record
    if record.holder == me:
        acquired = record.acquire_time or micro_time(wall)
        return Decision("renew", _spec(me, acquired, wall, record.transitions, timings), 0.0)
    expiry = expires_at(seen, timings)
    if record.holder and now < expiry:
        return Decision("wait", None, min(timings.retry_period, expiry - now))
    return Decision("take", _spec(me, wall, wall, record.transitions + 1, timings), 0.0)


def leading_until(sent_at: float, timings: Timings) -> float:
    """The holder acts until this (local monotonic) time unless a newer renewal succeeds;
    `sent_at` is when its last successful write was sent."""
    return sent_at + timings.renew_deadline


def release_spec(record: LeaseRecord, wall: datetime) -> dict[str, Any]:
    """What a holder writes when it stops on purpose: no holder, so a candidate takes the Lease
    at its next read instead of waiting out the duration."""
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": record.acquire_time,
        "renewTime": micro_time(wall),
        "leaseTransitions": record.transitions,
    }


def leader_lease(name: str, namespace: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The Lease object a first candidate creates (its spec comes from `decide`)."""
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": LEASE_KIND,
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
    }


def read_lease(lease: Mapping[str, Any]) -> tuple[str, str, LeaseRecord]:
    """(resourceVersion, uid, record) of a Lease as the apiserver returned it."""
    meta = lease.get("metadata") or {}
    return (
        str(meta.get("resourceVersion", "")),
        str(meta.get("uid", "")),
        LeaseRecord.from_spec(lease.get("spec")),
    )


def write_patch(resource_version: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Merge patch of one take, renewal or release: the resourceVersion read is a precondition
    (the apiserver answers 409 Conflict if anyone wrote the Lease since)."""
    if not resource_version:
        raise ValueError("a leader Lease write needs the resourceVersion it was decided on")
    return {"metadata": {"resourceVersion": resource_version}, "spec": dict(spec)}


def leader_event(
    lease_name: str,
    namespace: str,
    lease_uid: str,
    reason: str,
    message: str,
    wall: datetime,
    component: str,
) -> dict[str, Any]:
    """A core/v1 Event on the Lease (client-go posts its `LeaderElection` Events there too)."""
    stamp = wall.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    uid = {"uid": lease_uid} if lease_uid else {}
    involved = {"apiVersion": LEASE_API_VERSION, "kind": LEASE_KIND, **uid}
    involved |= {"name": lease_name, "namespace": namespace}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{lease_name}.", "namespace": namespace},
        "involvedObject": involved,
        "reason": reason,
        "message": message,
        "type": "Normal",
        "source": {"component": component},
        "reportingComponent": component,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


def _spec(
    me: str,
    acquired: datetime | str,
    wall: datetime,
    transitions: int,
    timings: Timings,
) -> dict[str, Any]:
    return {
        "holderIdentity": me,
        "leaseDurationSeconds": timings.lease_seconds,
        "acquireTime": acquired if isinstance(acquired, str) else micro_time(acquired),
        "renewTime": micro_time(wall),
        "leaseTransitions": transitions,
    }
