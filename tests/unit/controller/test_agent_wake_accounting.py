"""The controller's part of the agent's own wake: sleeps carry the plan's grant, and a wake the
agent ran is remembered and counted, with no call to the agent (reconcile/agent_wake.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client import generate_latest
from test_executor import BODY, FakeKube, SleepingAgents, controller, empty_plan

from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.reconcile.agent_wake import AgentWake
from vllm_sleep.reconcile.lifecycle import Sleep
from vllm_sleep.reconcile.observe import ANNOTATION_WOKEN_AT


class RecordingKube(FakeKube):
    def __init__(self) -> None:
        super().__init__()
        self.annotations: list[tuple[str, dict[str, Any]]] = []

    async def annotate_pod(self, namespace: str, pod: str, annotations: dict[str, Any]) -> None:
        self.annotations.append((pod, annotations))
        await super().annotate_pod(namespace, pod, annotations)


async def test_each_sleep_passes_its_grant_to_the_agent() -> None:
    ctl, _ = controller(FakeKube())
    agents = SleepingAgents()
    ctl.ctx.agents = agents  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    for idle, grant in ((True, True), (False, True), (True, False)):
        sleep = Sleep("m-0", 1, "why", idle=idle, wake_on_request=grant)
        await ctl.apply(empty_plan(actions=(sleep,), watch={"m-0": "ip"}), model)
        await asyncio.gather(*ctl.transitions.values())
    assert agents.granted == [True, True, False]
    await ctl.watchers.close()


async def test_an_agent_wake_is_remembered_and_counted_without_calling_the_agent() -> None:
    kube = RecordingKube()
    ctl, events = controller(kube)
    model = ModelDeployment.from_body(BODY)
    wake = AgentWake("m-0", 1_800_000_000.125, 0.5, None)
    await ctl.apply(empty_plan(agent_wakes=(wake,), watch={"m-0": "ip"}), model)
    assert kube.annotations == [("m-0", {ANNOTATION_WOKEN_AT: "1800000000.125"})]
    assert ctl.ctx.agents.calls == []  # type: ignore[attr-defined]
    assert ctl.transitions == {}  # no wake of the operator's
    assert ctl.last_wake_seconds == 0.5
    text = generate_latest(ctl.ctx.metrics.registry).decode()
    assert 'model="m",namespace="ns",outcome="ok",transition="wake"} 1.0' in text
    assert events == []  # the plan's own Event says it (reconcile tests)
    await ctl.watchers.close()


async def test_a_grant_taken_back_is_no_sleep_of_the_operators() -> None:
    """The take-back is a grant-only order: no slept-at memory (demand older than now would
    look answered), no sleep counted, no Slept Event; the agent's answer is the new report."""
    kube = RecordingKube()
    ctl, events = controller(kube)
    agents = SleepingAgents()
    ctl.ctx.agents = agents  # type: ignore[assignment]
    model = ModelDeployment.from_body(BODY)
    take_back = Sleep("m-0", 1, "no longer granted", idle=True, grant_only=True)
    await ctl.apply(empty_plan(actions=(take_back,), watch={"m-0": "ip"}), model)
    await asyncio.gather(*ctl.transitions.values())
    assert agents.grant_only == [True] and agents.granted == [False]
    assert kube.annotations == [] and events == []
    assert "vllm_sleep_transitions_total{" not in generate_latest(ctl.ctx.metrics.registry).decode()
    await ctl.watchers.close()
