"""An idle sleep (the pre-warm) measures the sleep itself and is known when its agent answers:
the pass that writes the Asleep its agent reports carries lastSleepSeconds (one status write).
It writes no memory on the pod (the agent's report carries it), so nothing waits for one."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.controller.children import Children
from vllm_sleep.controller.context import Context, Settings
from vllm_sleep.controller.model import ModelController
from vllm_sleep.controller.spec import parse_model
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.reconcile.lifecycle import Sleep


class Agents:
    async def sleep(self, *_: Any, **__: Any) -> StateReport:
        await asyncio.sleep(0.01)  # the sleep itself
        return StateReport(state=AgentState.ASLEEP, level=1, since=1.0)


class SlowKube:
    """The memory annotation waits until the test lets it land."""

    def __init__(self) -> None:
        self.annotating = asyncio.Event()
        self.land = asyncio.Event()

    async def annotate_pod(self, *_: Any, **__: Any) -> None:
        self.annotating.set()
        await self.land.wait()


async def test_an_idle_sleeps_seconds_are_known_when_it_answers_and_no_memory_is_written() -> None:
    kube = SlowKube()
    ctx = Context(
        settings=Settings(agent_image="a"),
        kube=kube,  # type: ignore[arg-type]
        agents=Agents(),  # type: ignore[arg-type]
        metrics=OperatorMetrics(),
        children=Children(kube),  # type: ignore[arg-type]
        parse=parse_model,
    )
    events: list[tuple[str, str, str]] = []
    ctl = ModelController(ctx, "ns", "m", lambda *e: events.append(e))
    sleep = Sleep("m-0", 1, "pre-warm after load", idle=True)
    await asyncio.wait_for(ctl._sleep(sleep, "10.0.0.1", "token", 30.0), 5)
    assert ctl.last_sleep_seconds is not None  # a pass now writes Asleep with it
    assert not kube.annotating.is_set()  # no memory write to wait for
    assert [e[1] for e in events] == ["Slept"]
