"""A transition's answer never replaces a newer report the long-poll already brought."""

from __future__ import annotations

import asyncio

from vllm_sleep.api.agent_protocol import AgentState, StateReport
from vllm_sleep.controller.watchers import AgentWatchers
from vllm_sleep.reconcile.lifecycle import ReplicaMemory
from vllm_sleep.reconcile.observe import ObservedPod


class NoAgents:
    pass


def pod(ip: str) -> ObservedPod:
    return ObservedPod(
        name="m-0",
        uid="u",
        replica=0,
        spec_hash=None,
        phase="Running",
        deleting=False,
        ip=ip,
        node="n",
        routed=True,
        memory=ReplicaMemory(),
    )


def test_an_older_transition_answer_does_not_replace_a_newer_report() -> None:
    w = AgentWatchers(NoAgents(), asyncio.Event())  # type: ignore[arg-type]
    newer = StateReport(state=AgentState.AWAKE, inflight=0, version=7)
    w.set_report("m-0", "10.0.0.1", newer)
    w.set_report("m-0", "10.0.0.1", StateReport(state=AgentState.AWAKE, held=2, version=5))
    assert w.report(pod("10.0.0.1")) == newer
    newest = StateReport(state=AgentState.AWAKE, version=8)
    w.set_report("m-0", "10.0.0.1", newest)
    assert w.report(pod("10.0.0.1")) == newest
    older_elsewhere = StateReport(state=AgentState.LOADING, version=1)  # a new pod, a new agent
    w.set_report("m-0", "10.0.0.2", older_elsewhere)
    assert w.report(pod("10.0.0.2")) == older_elsewhere


class ScriptedAgents:
    """Answers the long-polls from a script, then never again."""

    def __init__(self, answers: list[StateReport]) -> None:
        self.answers = answers

    async def state(self, *_: object, **__: object) -> StateReport:
        if self.answers:
            return self.answers.pop(0)
        await asyncio.sleep(3600)
        raise AssertionError


async def _watch(answers: list[StateReport], monkeypatch: object) -> tuple[AgentWatchers, int]:
    from vllm_sleep.controller import watchers

    monkeypatch.setattr(watchers, "RETRY_SECONDS", 0)  # type: ignore[attr-defined]
    kicks = 0
    kick = asyncio.Event()
    w = AgentWatchers(ScriptedAgents(answers), kick)  # type: ignore[arg-type]
    w.sync({"m-0": "10.0.0.1"}, "t")
    for _ in range(50):
        await asyncio.sleep(0)
        if kick.is_set():
            kicks += 1
            kick.clear()
    return w, kicks


async def test_one_lost_poll_of_a_known_agent_changes_nothing(monkeypatch: object) -> None:
    from vllm_sleep.controller.agents import UNREACHABLE

    asleep = StateReport(state=AgentState.ASLEEP, level=1, version=4)
    w, kicks = await _watch([asleep, UNREACHABLE, UNREACHABLE, asleep], monkeypatch)
    assert w.report(pod("10.0.0.1")) == asleep
    assert kicks == 1  # the first report only
    await w.close()


async def test_an_agent_that_keeps_failing_reads_as_unreachable(monkeypatch: object) -> None:
    from vllm_sleep.controller.agents import UNREACHABLE
    from vllm_sleep.controller.watchers import UNREACHABLE_AFTER

    asleep = StateReport(state=AgentState.ASLEEP, level=1, version=4)
    w, _ = await _watch([asleep] + [UNREACHABLE] * UNREACHABLE_AFTER, monkeypatch)
    assert w.report(pod("10.0.0.1")) == UNREACHABLE
    await w.close()


class RotatedAgent:
    """An agent whose token is `current`: anything else is refused (401)."""

    def __init__(self, current: str) -> None:
        self.current = current
        self.tokens: list[str] = []

    async def state(self, ip: str, token: str, **_: object) -> StateReport:
        from vllm_sleep.controller.agents import AgentError

        self.tokens.append(token)
        if token != self.current:
            raise AgentError(401, "bad token")
        await asyncio.sleep(3600)
        raise AssertionError


async def test_a_refused_token_is_flagged_and_a_new_one_restarts_the_polls() -> None:
    agent = RotatedAgent("new")
    kick = asyncio.Event()
    w = AgentWatchers(agent, kick)  # type: ignore[arg-type]
    w.sync({"m-0": "10.0.0.1"}, "old")
    await asyncio.wait_for(kick.wait(), timeout=5)
    assert w.token_rejected and agent.tokens[0] == "old"
    w.sync({"m-0": "10.0.0.1"}, "new")  # the loop read the Secret again
    for _ in range(100):
        if "new" in agent.tokens:
            break
        await asyncio.sleep(0.01)
    assert agent.tokens[-1] == "new"
    await w.close()
