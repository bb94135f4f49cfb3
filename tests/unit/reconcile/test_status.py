"""ModelDeployment status from observed replicas: phase, replicas, conditions, memory of times."""

from __future__ import annotations

from typing import Any

from planning import NOW, body, model, pod, report

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.model_status import ConditionReason, ModelDeploymentStatus
from vllm_sleep.reconcile.observe import ObservedPod, observe_pod
from vllm_sleep.reconcile.plan import observe_replica
from vllm_sleep.reconcile.status import Status, StatusFacts, model_status, rfc3339


def status_of(
    raw: dict[str, Any],
    pods: list[ObservedPod],
    reports: dict[str, Any],
    now: float = NOW,
    facts: StatusFacts = StatusFacts(),
) -> Status:
    observations = [observe_replica(p, reports[p.name]) for p in pods]
    return model_status(model(raw), pods, observations, reports, now, facts)


def conditions(status: Status) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_an_awake_routed_replica_makes_the_model_awake_and_ready() -> None:
    raw = body()
    s = status_of(raw, [pod(raw, routed=True)], {"m-0": report(since=NOW - 30)})
    assert (s["phase"], s["awake"], s["observedGeneration"]) == ("Awake", "1/1", 3)
    assert s["replicas"] == [
        {"pod": "m-0", "node": None, "state": "Awake", "since": rfc3339(NOW - 30)}
    ]
    c = conditions(s)
    assert (c["Ready"]["status"], c["Awake"]["status"], c["Degraded"]["status"]) == (
        "True",
        "True",
        "False",
    )
    assert c["Scheduled"]["reason"] == "PodsScheduled"
    ModelDeploymentStatus.model_validate(s)  # the status the CRD schema accepts


def test_an_asleep_replica_shows_its_level_and_the_model_stays_ready() -> None:
    raw = body()
    s = status_of(raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP, level=2)})
    assert s["phase"] == "Asleep"
    assert s["replicas"][0]["state"] == "Asleep" and s["replicas"][0]["level"] == 2
    c = conditions(s)
    assert c["Ready"]["status"] == "True" and c["Awake"]["status"] == "False"
    ModelDeploymentStatus.model_validate(s)


def test_a_failed_replica_carries_kubelets_reason_and_degrades_the_model() -> None:
    raw = body()
    s = status_of(raw, [pod(raw, restarts=3)], {"m-0": report(AgentState.UNREACHABLE)})
    assert s["phase"] == "Failed"
    assert "CUDA out of memory" in s["replicas"][0]["message"]
    c = conditions(s)
    assert c["Degraded"]["status"] == "True" and c["Ready"]["status"] == "False"
    assert "CUDA out of memory" in c["Degraded"]["message"]


def test_the_schedulers_message_explains_an_unscheduled_pod() -> None:
    raw = body()
    unplaced = observe_pod(
        {
            "metadata": {"name": "m-0", "labels": {"vllm-sleep.io/replica": "0"}},
            "status": {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "message": "0/3 nodes fit"}
                ],
            },
        }
    )
    s = status_of(raw, [unplaced], {"m-0": report(AgentState.UNREACHABLE)})
    c = conditions(s)
    assert (c["Scheduled"]["status"], c["Scheduled"]["message"]) == ("False", "m-0: 0/3 nodes fit")
    assert s["replicas"][0]["state"] == "Starting"


def test_transition_times_move_only_when_a_condition_flips() -> None:
    raw = body()
    first = status_of(raw, [pod(raw, routed=True)], {"m-0": report()}, now=NOW)
    later = NOW + 3600
    prior = body(status=first)
    same = status_of(prior, [pod(prior, routed=True)], {"m-0": report()}, now=later)
    assert conditions(same)["Awake"]["lastTransitionTime"] == rfc3339(NOW)
    asleep = status_of(prior, [pod(prior)], {"m-0": report(AgentState.ASLEEP)}, now=later)
    assert conditions(asleep)["Awake"]["lastTransitionTime"] == rfc3339(later)
    assert conditions(asleep)["Ready"]["lastTransitionTime"] == rfc3339(NOW)  # still ready


def test_activity_and_transition_times_are_kept_across_passes() -> None:
    raw = body()
    facts = StatusFacts(last_sleep_seconds=1.23456, last_wake_seconds=0.5)
    first = status_of(raw, [pod(raw)], {"m-0": report(last_activity=NOW - 5)}, facts=facts)
    assert first["lastActivityTime"] == rfc3339(NOW - 5)
    assert (first["lastSleepSeconds"], first["lastWakeSeconds"]) == (1.235, 0.5)
    # A restarted operator (no facts of its own, no activity seen yet) keeps what status said.
    prior = body(status=first)
    again = status_of(prior, [pod(prior)], {"m-0": report(AgentState.ASLEEP)})
    assert again["lastActivityTime"] == rfc3339(NOW - 5)
    assert (again["lastSleepSeconds"], again["lastWakeSeconds"]) == (1.235, 0.5)


def test_a_placement_problem_is_the_degraded_and_scheduled_message() -> None:
    s = status_of(body(), [], {}, facts=StatusFacts(problem="GPUPool 'p' does not exist"))
    assert s["phase"] == "Pending"
    c = conditions(s)
    assert c["Degraded"]["message"] == c["Scheduled"]["message"] == "GPUPool 'p' does not exist"


def test_a_problem_of_the_whole_model_is_scheduled_false_no_placement() -> None:
    # The gateway refuses such a model's requests even where a sleeping pod's agent could hold
    # them (no replica wakes); a replica's problem keeps CannotPlace, which it does not.
    gone = "GPUPool 'p' does not exist; create it or fix spec.placement.pool"
    asleep = {"m-0": report(AgentState.ASLEEP)}
    raw = body()
    whole = status_of(raw, [pod(raw)], asleep, facts=StatusFacts(problem=gone, whole_model=True))
    one = status_of(raw, [pod(raw)], asleep, facts=StatusFacts(problem="m-1 fits no device"))
    assert (conditions(whole)["Scheduled"]["status"], conditions(whole)["Scheduled"]["reason"]) == (
        "False",
        ConditionReason.NO_PLACEMENT,
    )
    assert conditions(whole)["Scheduled"]["message"] == gone
    assert conditions(one)["Scheduled"]["reason"] == ConditionReason.CANNOT_PLACE


def test_scaled_to_zero_is_asleep() -> None:
    s = status_of(body(replicas=0), [], {})
    assert (s["phase"], s["awake"]) == ("Asleep", "0/0")


def test_scaled_to_zero_is_not_ready() -> None:
    # Nothing is loaded, so nothing can wake for a request: "Ready (asleep)" would promise one.
    ready = conditions(status_of(body(replicas=0), [], {}))["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "ScaledToZero")
    assert "replicas is 0" in ready["message"]


def test_the_agents_last_error_says_why_a_replica_is_not_awake() -> None:
    raw = body()
    why = "wake: /collective_rpc: vLLM /collective_rpc: HTTP 500: reload failed"
    s = status_of(raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP, level=2, last_error=why)})
    assert s["replicas"][0]["state"] == "Asleep" and s["replicas"][0]["message"] == why
    assert conditions(s)["Degraded"]["status"] == "False"  # the operator retries; not failed
    ModelDeploymentStatus.model_validate(s)


def test_not_ready_for_a_problem_says_the_problem_not_the_phase() -> None:
    # An asleep model is Ready; one that cannot run is not, and Ready's reason must say why
    # (kubectl wait and GitOps health checks show Ready's reason, not Degraded's).
    raw = body()
    problem = "GPUPool 'p' does not exist"
    s = status_of(
        raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP)}, facts=StatusFacts(problem=problem)
    )
    ready = conditions(s)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "Problem", problem)


def test_not_ready_for_a_refused_name_says_so() -> None:
    raw = body()
    refusal = ("ServedNameConflict", "served name 'm' belongs to the older ModelDeployment a/m")
    s = status_of(
        raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP)}, facts=StatusFacts(name_refusal=refusal)
    )
    ready = conditions(s)["Ready"]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", *refusal)


def test_ready_while_asleep_gives_the_phase_as_its_reason() -> None:
    raw = body()
    s = status_of(raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP)})
    assert conditions(s)["Ready"]["reason"] == "Asleep"
