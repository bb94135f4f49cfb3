"""Leader election's pure decision (api.leader) in fake time: who writes what, and that a holder
that cannot renew always stops acting before another replica may take its Lease."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

from vllm_sleep.api import leader
from vllm_sleep.api.leader import LeaseRecord, Seen, Timings, decide, leading_until, see

WALL = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
T = Timings()  # 15 / 10 / 2


def held(holder: str, since: float = 100.0, rv: str = "7", **record: object) -> Seen:
    return Seen(rv, LeaseRecord(holder=holder, **record), since)  # type: ignore[arg-type]


def test_defaults_are_client_gos() -> None:
    assert (T.lease_duration, T.renew_deadline, T.retry_period) == (15.0, 10.0, 2.0)


@pytest.mark.parametrize(
    ("lease", "renew", "retry", "why"),
    [
        (10, 10, 2, "must exceed the renew deadline"),
        (8, 10, 2, "must exceed the renew deadline"),
        (15, 2, 2, "must exceed the retry period"),
        (15, 10, 0, "positive"),
        (-1, 10, 2, "positive"),
    ],
)
def test_unsafe_timings_are_refused(lease: float, renew: float, retry: float, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        Timings(lease, renew, retry)


def test_the_first_candidate_creates_the_lease_holding_it() -> None:
    d = decide("a", None, 5.0, WALL, T)
    assert d.action == "create"
    assert d.spec == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-05-01T12:00:00.000000Z",
        "renewTime": "2026-05-01T12:00:00.000000Z",
        "leaseTransitions": 0,
    }


@pytest.mark.parametrize(
    ("now", "action", "wait"),
    [
        (100.0, "wait", 2.0),  # just seen: wait a retry period
        (110.0, "wait", 2.0),
        (114.5, "wait", 0.5),  # next attempt lands on the expiry, not a retry period later
        (115.0, "take", 0.0),  # seen unchanged for leaseDurationSeconds: expired
        (400.0, "take", 0.0),
    ],
)
def test_a_held_lease_is_taken_only_once_unchanged_for_its_duration(
    now: float, action: str, wait: float
) -> None:
    d = decide("b", held("a", since=100.0, lease_seconds=15, transitions=3), now, WALL, T)
    assert (d.action, d.wait) == (action, pytest.approx(wait))
    if action == "take":
        assert d.spec is not None
        assert d.spec["holderIdentity"] == "b" and d.spec["leaseTransitions"] == 4


def test_expiry_counts_from_when_this_replica_saw_the_version_not_the_written_renew_time() -> None:
    first = see(None, "7", LeaseRecord(holder="a", lease_seconds=15), now=100.0)
    again = see(first, "7", LeaseRecord(holder="a", lease_seconds=15), now=110.0)
    assert again.since == 100.0  # same version: still counted from the first sight
    renewed = see(again, "8", LeaseRecord(holder="a", lease_seconds=15), now=112.0)
    assert renewed.since == 112.0  # a renewal (new version) restarts the count
    assert decide("b", renewed, 120.0, WALL, T).action == "wait"
    assert decide("b", renewed, 127.0, WALL, T).action == "take"


def test_the_holders_written_duration_wins_over_the_candidates_own() -> None:
    short = Timings(lease_duration=3, renew_deadline=2, retry_period=1)
    seen = held("a", since=100.0, lease_seconds=15)
    assert decide("b", seen, 110.0, WALL, short).action == "wait"
    assert decide("b", held("a", since=100.0), 103.0, WALL, short).action == "take"  # none written


def test_the_holder_renews_keeping_its_acquire_time_and_transitions() -> None:
    seen = held("a", acquire_time="2026-05-01T11:00:00.000000Z", transitions=2, lease_seconds=15)
    d = decide("a", seen, 500.0, WALL, T)  # long after expiry: still its own Lease
    assert d.action == "renew" and d.spec is not None
    assert d.spec["acquireTime"] == "2026-05-01T11:00:00.000000Z"
    assert d.spec["renewTime"] == "2026-05-01T12:00:00.000000Z"
    assert d.spec["leaseTransitions"] == 2


def test_a_released_lease_is_taken_at_once() -> None:
    record = LeaseRecord.from_spec(leader.release_spec(LeaseRecord("a", 15, "x", 4), WALL))
    assert record.holder == "" and record.lease_seconds == 1
    d = decide("b", Seen("9", record, since=100.0), 100.0, WALL, T)
    assert d.action == "take" and d.spec is not None and d.spec["leaseTransitions"] == 5


def test_leading_until_is_the_renew_deadline_after_the_last_successful_send() -> None:
    assert leading_until(40.0, T) == 50.0


def test_record_reading_tolerates_missing_and_bad_fields() -> None:
    assert LeaseRecord.from_spec(None) == LeaseRecord()
    bad = {"holderIdentity": 3, "leaseDurationSeconds": -2, "leaseTransitions": "x"}
    assert LeaseRecord.from_spec(bad) == LeaseRecord()
    rv, uid, record = leader.read_lease(
        {"metadata": {"resourceVersion": "12", "uid": "u"}, "spec": {"holderIdentity": "a"}}
    )
    assert (rv, uid, record.holder) == ("12", "u", "a")


def test_every_write_carries_the_resource_version_it_was_decided_on() -> None:
    spec = {"holderIdentity": "a"}
    assert leader.write_patch("12", spec) == {"metadata": {"resourceVersion": "12"}, "spec": spec}
    with pytest.raises(ValueError, match="resourceVersion"):
        leader.write_patch("", spec)


def test_the_event_names_the_lease() -> None:
    ev = leader.leader_event("l", "ns", "uid-1", "LeaderElection", "a became leader", WALL, "op")
    assert ev["involvedObject"] == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "name": "l",
        "namespace": "ns",
        "uid": "uid-1",
    }
    assert ev["metadata"] == {"generateName": "l.", "namespace": "ns"}
    assert ev["firstTimestamp"] == "2026-05-01T12:00:00Z"


# --- the safety inequality -----------------------------------------------------------------------


def first_take(seen: Seen, timings: Timings, me: str = "b") -> float:
    """The first local time at which a candidate that saw `seen` decides to take the Lease,
    stepping as the candidate does (its `wait`)."""
    now = seen.since
    for _ in range(10_000):
        d = decide(me, seen, now, WALL, timings)
        if d.action == "take":
            return now
        now += d.wait
    raise AssertionError("never took it")


timings_st = st.builds(
    lambda retry, renew_extra, lease_extra: Timings(
        lease_duration=retry + renew_extra + lease_extra,
        renew_deadline=retry + renew_extra,
        retry_period=retry,
    ),
    st.floats(0.1, 5),
    st.floats(0.01, 20),
    st.floats(0.01, 20),
)


@settings(max_examples=300, deadline=None)
@given(
    timings=timings_st,
    sent=st.floats(0, 1e6),
    commit_delay=st.floats(0, 30),
    observe_delay=st.floats(0, 30),
)
def test_a_holder_that_cannot_renew_stops_before_its_lease_can_be_taken(
    timings: Timings, sent: float, commit_delay: float, observe_delay: float
) -> None:
    """Its last successful write was sent at `sent`, committed `commit_delay` later and first seen
    by the candidate `observe_delay` after that (equal clock rates): the holder's stop time is
    strictly before the candidate's earliest take."""
    seen = see(
        None, "8", LeaseRecord("a", timings.lease_seconds), sent + commit_delay + observe_delay
    )
    stops = leading_until(sent, timings)
    takes = first_take(seen, timings)
    assert stops < takes
    assert takes - stops >= timings.lease_duration - timings.renew_deadline


@settings(max_examples=300, deadline=None)
@given(timings=timings_st, rate=st.floats(0.01, 0.999), slow_holder=st.booleans())
def test_clock_rate_drift_below_lease_over_renew_is_tolerated(
    timings: Timings, rate: float, slow_holder: bool
) -> None:
    """client-go's tolerance: one clock may run up to leaseDuration/renewDeadline times as fast as
    the other. In real seconds after the holder's send, the holder stops at renewDeadline on its
    clock and the candidate takes at leaseDurationSeconds on its own."""
    ratio = 1 + rate * (timings.lease_seconds / timings.renew_deadline - 1)  # < the tolerance
    holder_rate, candidate_rate = (1.0, ratio) if not slow_holder else (1 / ratio, 1.0)
    stops_real = timings.renew_deadline / holder_rate
    takes_real = (
        first_take(Seen("8", LeaseRecord("a", timings.lease_seconds), 0.0), timings)
        / candidate_rate
    )
    assert stops_real < takes_real


def test_without_the_margin_a_stalled_holder_overlaps_its_successor() -> None:
    """What the Timings check prevents: a renew deadline longer than the lease lets a candidate
    take the Lease while the holder still acts."""
    unsafe = object.__new__(Timings)
    for name, value in (("lease_duration", 10.0), ("renew_deadline", 12.0), ("retry_period", 2.0)):
        object.__setattr__(unsafe, name, value)
    seen = Seen("8", LeaseRecord("a", unsafe.lease_seconds), since=0.0)
    assert first_take(seen, unsafe) < leading_until(0.0, unsafe)


# --- two replicas against one Lease, any interleaving --------------------------------------------


@dataclass
class Replica:
    name: str
    gen: int = 0  # a replica whose deadline passed exits and comes back with a new identity
    seen: Seen | None = None
    start: float | None = None
    until: float | None = None
    acted: list[tuple[float, float]] = field(default_factory=list)

    @property
    def me(self) -> str:
        return f"{self.name}_{self.gen}"


step_st = st.tuples(
    st.integers(0, 1),  # which replica runs a round
    st.floats(0, 6),  # time since the previous round
    st.sampled_from(["ok", "unreachable", "reply_lost"]),
    st.floats(0, 3),  # from sending the write to its commit
    st.floats(0, 3),  # from the commit to the reply
)


def overlap(steps: list[tuple[int, float, str, float, float]], timings: Timings) -> list[str]:
    """Run two replicas against a fake apiserver (compare-and-swap on resourceVersion), their
    rounds in the order and with the fates `steps` give; the overlaps of their acting intervals
    (from the reply of the write that made one holder to its renew deadline)."""
    replicas = [Replica("a"), Replica("b")]
    rv, spec = 0, None
    now = 0.0

    def retire(r: Replica) -> None:
        if r.start is not None and r.until is not None and r.start < r.until:
            r.acted.append((r.start, r.until))
        r.start = r.until = r.seen = None
        r.gen += 1

    for who, dt, fate, to_commit, to_reply in steps:
        now += dt
        for r in replicas:
            if r.until is not None and r.until <= now:
                retire(r)
        r = replicas[who]
        if fate == "unreachable":
            continue
        r.seen = None if spec is None else see(r.seen, str(rv), LeaseRecord.from_spec(spec), now)
        d = decide(r.me, r.seen, now, WALL, timings)
        if d.action == "wait":
            continue
        # The read, the decision and the commit are one atomic step here (no other write can
        # land in between); the write was sent `to_commit` before its commit.
        rv, spec = rv + 1, d.spec
        if fate == "reply_lost":
            continue
        sent, replied = now - to_commit, now + to_reply
        until = leading_until(sent, timings)
        if replied >= until:
            continue  # it learns of the success only after its deadline: never acts on it
        if r.start is None:
            r.start = replied
        r.until = until
    for r in replicas:
        retire(r)
    (a, b) = replicas
    return [
        f"a {s1:.2f}-{e1:.2f} and b {s2:.2f}-{e2:.2f}"
        for s1, e1 in a.acted
        for s2, e2 in b.acted
        if s1 < e2 and s2 < e1
    ]


steps_st = st.lists(step_st, min_size=1, max_size=60)


@settings(max_examples=500, deadline=None)
@given(steps=steps_st)
def test_two_replicas_never_act_at_once(steps: list[tuple[int, float, str, float, float]]) -> None:
    """Any interleaving of rounds, unreachable apiserver and lost replies included."""
    assert overlap(steps, T) == []


def test_the_two_replica_check_finds_the_overlap_of_unsafe_timings() -> None:
    """The check above can fail: with a renew deadline longer than the lease it finds replicas
    acting at once."""
    unsafe = object.__new__(Timings)
    for name, value in (("lease_duration", 10.0), ("renew_deadline", 12.0), ("retry_period", 2.0)):
        object.__setattr__(unsafe, name, value)
    found = find(
        steps_st, lambda steps: bool(overlap(steps, unsafe)), settings=settings(max_examples=5000)
    )
    assert overlap(found, unsafe)
