"""Reading a pod into the plan's typed value: placement, memory, the engine's failure."""

from __future__ import annotations

from vllm_sleep.api.names import ANNOTATION_SPEC_HASH, CONDITION_AWAKE, LABEL_REPLICA
from vllm_sleep.reconcile.lifecycle import ReplicaMemory
from vllm_sleep.reconcile.observe import engine_failure, memory_patch, observe_pod


def pod_status(
    restarts: int, ready: bool, waiting: str | None = None, message: str | None = None
) -> dict:  # type: ignore[type-arg]
    cs = {
        "name": "vllm",
        "restartCount": restarts,
        "ready": ready,
        "state": {"waiting": {"reason": waiting}} if waiting else {"running": {}},
        "lastState": {
            "terminated": {
                "exitCode": 1,
                "reason": "Error",
                **({"message": message} if message else {}),
            }
        }
        if restarts
        else {},
    }
    return {"containerStatuses": [{"name": "agent", "ready": True, "restartCount": 0}, cs]}


def test_healthy_and_never_restarted_engines_are_not_failing() -> None:
    assert engine_failure(pod_status(0, False)) is None
    assert engine_failure(pod_status(2, True)) is None  # recovered


def test_crash_loop_reports_the_last_log_line() -> None:
    f = engine_failure(
        pod_status(3, False, "CrashLoopBackOff", "loading...\nCUDA out of memory: tried 100 GiB")
    )
    assert f is not None and f.restarts == 3
    assert f.reason == "vLLM is crash-looping (3 restarts): CUDA out of memory: tried 100 GiB"


def test_without_a_message_the_exit_code_is_shown() -> None:
    f = engine_failure(pod_status(1, False))
    assert (
        f is not None and "exit code 1 (Error)" in f.reason and "restarted (1 restart)" in f.reason
    )


def test_a_pod_is_read_once_into_a_typed_value() -> None:
    pod = {
        "metadata": {
            "name": "m-1",
            "uid": "u",
            "labels": {LABEL_REPLICA: "1"},
            "annotations": {ANNOTATION_SPEC_HASH: "abc", **memory_patch(woken_at=12.5)},
            "deletionTimestamp": "2027-01-01T00:00:00Z",
        },
        "spec": {"nodeName": "gpu-node-3"},
        "status": {
            "phase": "Running",
            "podIP": "10.1.2.3",
            "conditions": [{"type": CONDITION_AWAKE, "status": "True"}],
        },
    }
    seen = observe_pod(pod)
    assert (seen.name, seen.uid, seen.replica, seen.spec_hash) == ("m-1", "u", 1, "abc")
    assert (seen.phase, seen.deleting, seen.ip, seen.node, seen.routed) == (
        "Running",
        True,
        "10.1.2.3",
        "gpu-node-3",
        True,
    )
    assert seen.memory == ReplicaMemory(woken_at=12.5)
    assert (seen.failure, seen.unscheduled, seen.ended) == (None, None, False)


def test_a_bare_pod_reads_as_unplaced_unrouted_and_never_desired() -> None:
    seen = observe_pod({"metadata": {"name": "x", "labels": {LABEL_REPLICA: "two"}}})
    assert (seen.replica, seen.ip, seen.routed, seen.deleting) == (-1, None, False, False)
    assert seen.memory == ReplicaMemory()


def test_memory_annotations_round_trip() -> None:
    patch = memory_patch(slept_at=5.0, prewarmed=True)
    seen = observe_pod({"metadata": {"name": "x", "annotations": patch}})
    assert seen.memory == ReplicaMemory(slept_at=5.0, prewarmed=True)
    garbled = {k: "not a number" for k in memory_patch(woken_at=1.0, slept_at=1.0)}
    assert observe_pod({"metadata": {"name": "x", "annotations": garbled}}).memory == (
        ReplicaMemory()
    )


def test_ended_pods_are_the_ones_that_never_run_again() -> None:
    for phase, ended in (("Succeeded", True), ("Failed", True), ("Running", False)):
        assert observe_pod({"metadata": {"name": "x"}, "status": {"phase": phase}}).ended is ended
