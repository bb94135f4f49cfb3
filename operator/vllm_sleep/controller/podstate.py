"""What a model pod's own status says about its engine, beyond what the agent can report.

The agent cannot report a vLLM that never comes up (it just sees `/health` refused), but kubelet
can: restarts, CrashLoopBackOff, and the termination message (the vLLM log tail, thanks to
`terminationMessagePolicy: FallbackToLogsOnError`). That is how "Failed, and why" reaches the
ModelDeployment's status.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..api.names import CONTAINER_VLLM

MESSAGE_LIMIT = 300  # status and Events stay readable; the pod keeps the full text


@dataclass(frozen=True)
class EngineFailure:
    restarts: int
    reason: str


def engine_failure(pod: dict[str, Any]) -> EngineFailure | None:
    """The vLLM container restarted and is not (yet) ready again: it is failing."""
    for cs in pod.get("status", {}).get("containerStatuses") or []:
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
