"""The sleep/wake decision: examples for each rule, and properties over random observations."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.model_status import ModelPhase as Phase
from vllm_sleep.reconcile.lifecycle import (
    ModelPolicy,
    Policy,
    ReplicaMemory,
    ReplicaObservation,
    Route,
    Sleep,
    Wake,
    decide,
)
from vllm_sleep.reconcile.phase import summarize

AUTO = ModelPolicy(Policy.AUTO, level=1, idle_timeout=600, min_awake=30)
NOW = 1_000_000.0


def obs(state: AgentState = AgentState.AWAKE, **kw: object) -> ReplicaObservation:
    return ReplicaObservation(pod=str(kw.pop("pod", "m-0")), agent=state, **kw)  # type: ignore[arg-type]


def test_prewarm_sleeps_a_freshly_loaded_replica_before_routing_it() -> None:
    d = decide(AUTO, [obs(routed=False)], {}, demand_at=None, now=NOW)
    assert d.actions == [Sleep("m-0", 1, "pre-warm after load", idle=True)]


def test_recent_demand_skips_prewarm_and_routes() -> None:
    d = decide(AUTO, [obs(routed=False)], {}, demand_at=NOW - 5, now=NOW)
    assert d.actions == [Route("m-0", True)]


def test_held_requests_skip_prewarm() -> None:
    d = decide(AUTO, [obs(routed=False, held=2)], {}, demand_at=None, now=NOW)
    assert d.actions == [Route("m-0", True)]


def test_idle_replica_leaves_routing_then_sleeps() -> None:
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 700, prewarmed=True)}
    d = decide(AUTO, [obs(routed=True, last_activity=NOW - 601)], mem, None, NOW)
    assert d.actions == [Route("m-0", False), Sleep("m-0", 1, "idle for 601s", idle=True)]


def test_active_replica_stays_and_reports_when_to_look_again() -> None:
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 700, prewarmed=True)}
    d = decide(AUTO, [obs(routed=True, last_activity=NOW - 100)], mem, None, NOW)
    assert d.actions == []
    assert d.next_check_in == 500


def test_min_awake_protects_a_just_woken_replica() -> None:
    policy = ModelPolicy(Policy.AUTO, level=1, idle_timeout=5, min_awake=30)
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 10, prewarmed=True)}
    d = decide(policy, [obs(routed=True)], mem, None, NOW)
    assert d.actions == [] and d.next_check_in == 20


def test_inflight_requests_block_sleep() -> None:
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 7000, prewarmed=True)}
    d = decide(AUTO, [obs(routed=True, inflight=1, last_activity=NOW - 7000)], mem, None, NOW)
    assert not any(isinstance(a, Sleep) for a in d.actions)


def test_demand_after_sleep_wakes() -> None:
    mem = {"m-0": ReplicaMemory(slept_at=NOW - 50, prewarmed=True)}
    d = decide(AUTO, [obs(AgentState.ASLEEP)], mem, demand_at=NOW - 1, now=NOW)
    assert d.actions == [Wake("m-0", "demand")]


def test_demand_older_than_the_sleep_does_not_wake() -> None:
    mem = {"m-0": ReplicaMemory(slept_at=NOW - 50, prewarmed=True)}
    d = decide(AUTO, [obs(AgentState.ASLEEP)], mem, demand_at=NOW - 60, now=NOW)
    assert d.actions == []


def test_held_request_at_a_sleeping_pod_wakes_it() -> None:
    d = decide(AUTO, [obs(AgentState.ASLEEP, held=1)], {}, None, NOW)
    assert d.actions == [Wake("m-0", "1 request(s) held at the pod")]


def test_policy_asleep_never_wakes_and_sleeps_awake_replicas() -> None:
    asleep = ModelPolicy(Policy.ASLEEP, 2, 600, 30)
    assert decide(asleep, [obs(AgentState.ASLEEP, held=3)], {}, NOW, NOW).actions == []
    acts = decide(asleep, [obs(routed=True)], {}, None, NOW).actions
    assert acts == [Route("m-0", False), Sleep("m-0", 2, "policy is Asleep")]


def test_policy_always_awake_wakes_and_routes() -> None:
    always = ModelPolicy(Policy.ALWAYS_AWAKE, 1, 600, 30)
    assert decide(always, [obs(AgentState.ASLEEP)], {}, None, NOW).actions == [
        Wake("m-0", "policy is AlwaysAwake")
    ]
    assert decide(always, [obs(routed=False)], {}, None, NOW).actions == [Route("m-0", True)]


def test_wake_on_request_false_ignores_demand() -> None:
    off = ModelPolicy(Policy.AUTO, 1, 600, 30, wake_on_request=False)
    assert decide(off, [obs(AgentState.ASLEEP, held=1)], {}, NOW, NOW).actions == []


def test_transitioning_or_unreachable_replicas_are_left_alone_but_unrouted() -> None:
    for state in (
        AgentState.WAKING,
        AgentState.SLEEPING,
        AgentState.DRAINING,
        AgentState.UNREACHABLE,
    ):
        assert decide(AUTO, [obs(state, routed=True)], {}, NOW, NOW).actions == [
            Route("m-0", False)
        ]
        assert decide(AUTO, [obs(state, routed=False)], {}, NOW, NOW).actions == []


states = st.sampled_from(list(AgentState))
observations = st.builds(
    ReplicaObservation,
    pod=st.sampled_from(["a-0", "a-1", "a-2"]),
    agent=states,
    routed=st.booleans(),
    inflight=st.integers(0, 3),
    held=st.integers(0, 3),
    last_activity=st.one_of(st.none(), st.floats(NOW - 5000, NOW)),
    deleting=st.booleans(),
)
policies = st.builds(
    ModelPolicy,
    policy=st.sampled_from(list(Policy)),
    level=st.sampled_from([1, 2]),
    idle_timeout=st.floats(1, 3600),
    min_awake=st.floats(0, 600),
    wake_on_request=st.booleans(),
)
memories = st.builds(
    ReplicaMemory,
    woken_at=st.one_of(st.none(), st.floats(NOW - 5000, NOW)),
    slept_at=st.one_of(st.none(), st.floats(NOW - 5000, NOW)),
    prewarmed=st.booleans(),
)


@given(
    policies,
    st.lists(observations, max_size=3, unique_by=lambda r: r.pod),
    st.dictionaries(st.sampled_from(["a-0", "a-1", "a-2"]), memories),
    st.one_of(st.none(), st.floats(NOW - 5000, NOW)),
)
def test_safety_properties(
    policy: ModelPolicy,
    replicas: list[ReplicaObservation],
    memory: dict[str, ReplicaMemory],
    demand: float | None,
) -> None:
    d = decide(policy, replicas, memory, demand, NOW)
    by_pod = {r.pod: r for r in replicas}
    for i, a in enumerate(d.actions):
        r = by_pod[a.pod]
        assert not r.deleting
        if isinstance(a, Route) and a.routed:
            # Only an awake engine is ever put into routing.
            assert r.agent == AgentState.AWAKE
        if isinstance(a, Sleep):
            assert r.agent == AgentState.AWAKE
            # Work in progress is never put to sleep, except by an explicit Asleep policy.
            if policy.policy != Policy.ASLEEP:
                assert r.inflight == 0 and r.held == 0
            # A routed replica leaves routing before it is told to sleep.
            if r.routed:
                assert Route(a.pod, False) in d.actions[:i]
        if isinstance(a, Wake):
            assert r.agent == AgentState.ASLEEP
            assert policy.policy != Policy.ASLEEP
    pods_acted = [(type(a), a.pod) for a in d.actions if not isinstance(a, Route)]
    assert len(pods_acted) == len(set(a.pod for a in d.actions if not isinstance(a, Route)))


def test_phase_summary() -> None:
    assert summarize([], 1).phase == Phase.PENDING
    assert summarize([], 0).phase == Phase.ASLEEP
    assert summarize([obs(AgentState.LOADING)], 1).phase == Phase.LOADING
    assert summarize([obs(AgentState.ASLEEP)], 1).phase == Phase.ASLEEP
    assert summarize([obs(AgentState.WAKING)], 1).phase == Phase.WAKING
    assert summarize([obs(AgentState.SLEEPING)], 1).phase == Phase.DRAINING
    assert summarize([obs(routed=True), obs(AgentState.ASLEEP, pod="m-1")], 2).phase == Phase.AWAKE
    assert summarize([obs(AgentState.FAILED)], 1).phase == Phase.FAILED


def test_explicit_sleep_request_sleeps_an_awake_replica() -> None:
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 100, prewarmed=True)}
    d = decide(AUTO, [obs(routed=True)], mem, None, NOW, sleep_request=NOW - 1)
    assert d.actions == [Route("m-0", False), Sleep("m-0", 1, "sleep requested")]


def test_sleep_request_older_than_the_wake_is_ignored() -> None:
    mem = {"m-0": ReplicaMemory(woken_at=NOW - 10, prewarmed=True)}
    d = decide(AUTO, [obs(routed=True)], mem, None, NOW, sleep_request=NOW - 20)
    assert not any(isinstance(a, Sleep) for a in d.actions)
