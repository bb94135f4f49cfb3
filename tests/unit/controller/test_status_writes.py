"""An idle model makes no API writes: a pass over a body that lags the operator's own last
status write (kopf's body is only as fresh as the last watch event) writes nothing."""

from __future__ import annotations

from typing import Any

from vllm_sleep.controller.children import Children
from vllm_sleep.controller.context import Context, Settings
from vllm_sleep.controller.model import ModelController
from vllm_sleep.controller.spec import parse_model
from vllm_sleep.metrics import OperatorMetrics


class CountingKube:
    def __init__(self) -> None:
        self.writes: list[dict[str, Any]] = []

    async def patch_model_status(
        self, namespace: str, name: str, status: dict[str, Any], **_: Any
    ) -> None:
        self.writes.append(status)


def cond(ctype: str, status: str, at: str) -> dict[str, str]:
    return {
        "type": ctype,
        "status": status,
        "reason": "r",
        "message": "m",
        "lastTransitionTime": at,
    }


def status(ready: str, at: str) -> dict[str, Any]:
    return {"phase": "Asleep", "conditions": [cond("Ready", ready, at), cond("Awake", "False", at)]}


async def test_a_condition_that_did_not_flip_keeps_its_time_and_is_not_written_again() -> None:
    kube = CountingKube()
    ctx = Context(
        settings=Settings(agent_image="a"),
        kube=kube,  # type: ignore[arg-type]
        agents=None,  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        children=Children(kube),  # type: ignore[arg-type]
        parse=parse_model,
    )
    ctl = ModelController(ctx, "ns", "m", lambda *_: None)
    await ctl._write_status(status("True", "2026-01-01T00:00:00Z"))
    # Later passes over a stale body compute "just flipped" again, with their own clock.
    for t in ("2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"):
        await ctl._write_status(status("True", t))
    assert len(kube.writes) == 1
    await ctl._write_status(status("False", "2026-01-01T00:00:03Z"))  # a real flip
    assert len(kube.writes) == 2
    ready, awake = kube.writes[1]["conditions"]
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:03Z"
    assert awake["lastTransitionTime"] == "2026-01-01T00:00:00Z"
