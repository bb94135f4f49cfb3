"""Per-replica memory kept on the pod itself, as annotations.

Why on the pod: the facts (when it last woke, whether its slow first sleep happened) belong to
that engine and must die with it — a replacement pod has to pre-warm again. Kept in the API
server, they survive an operator restart; the agents' own reports remain the truth about state.
"""

from __future__ import annotations

from typing import Any

from ..api.agent_protocol import AgentState, StateReport
from ..api.names import GROUP
from ..reconcile.lifecycle import ReplicaMemory

WOKEN_AT = f"{GROUP}/woken-at"
SLEPT_AT = f"{GROUP}/slept-at"
PREWARMED = f"{GROUP}/prewarmed"


def memory_from_pod(pod: dict[str, Any], report: StateReport | None = None) -> ReplicaMemory:
    ann = pod["metadata"].get("annotations") or {}
    slept_at = _float(ann.get(SLEPT_AT))
    prewarmed = ann.get(PREWARMED) == "true"
    if report is not None and report.state == AgentState.ASLEEP:
        # An engine found asleep without our annotations (slept by a previous operator that
        # died, or by hand): the agent's own clock says since when; it needs no pre-warm.
        slept_at = slept_at if slept_at is not None else report.since
        prewarmed = True
    return ReplicaMemory(woken_at=_float(ann.get(WOKEN_AT)), slept_at=slept_at, prewarmed=prewarmed)


def memory_patch(
    woken_at: float | None = None, slept_at: float | None = None, prewarmed: bool | None = None
) -> dict[str, str | None]:
    patch: dict[str, str | None] = {}
    if woken_at is not None:
        patch[WOKEN_AT] = f"{woken_at:.3f}"
    if slept_at is not None:
        patch[SLEPT_AT] = f"{slept_at:.3f}"
    if prewarmed is not None:
        patch[PREWARMED] = "true" if prewarmed else "false"
    return patch


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
