"""Reading an engine's failure from its pod status (kubelet's restart record)."""

from __future__ import annotations

from vllm_sleep.controller.podstate import engine_failure


def pod(restarts: int, ready: bool, waiting: str | None = None, message: str | None = None) -> dict:  # type: ignore[type-arg]
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
    return {
        "status": {"containerStatuses": [{"name": "agent", "ready": True, "restartCount": 0}, cs]}
    }


def test_healthy_and_never_restarted_engines_are_not_failing() -> None:
    assert engine_failure(pod(0, False)) is None
    assert engine_failure(pod(2, True)) is None  # recovered


def test_crash_loop_reports_the_last_log_line() -> None:
    f = engine_failure(
        pod(3, False, "CrashLoopBackOff", "loading...\nCUDA out of memory: tried 100 GiB")
    )
    assert f is not None and f.restarts == 3
    assert f.reason == "vLLM is crash-looping (3 restarts): CUDA out of memory: tried 100 GiB"


def test_without_a_message_the_exit_code_is_shown() -> None:
    f = engine_failure(pod(1, False))
    assert (
        f is not None and "exit code 1 (Error)" in f.reason and "restarted (1 restart)" in f.reason
    )
