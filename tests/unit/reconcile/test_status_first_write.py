"""A new model's first status, from the pass that creates its pods ("Pending, no pods yet"), is
held until the pass that sees the pods supersedes it: one write per model fewer in a bring-up,
and nothing a user needs hidden (a model with a problem, or with pods, is written as before)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from kubernetes_asyncio import client
from planning import body, pod, report
from test_status import status_of

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.controller.kube import Kube
from vllm_sleep.reconcile.observe import EngineFailure
from vllm_sleep.reconcile.status import StatusFacts, awaits_its_pods


def test_only_a_model_without_pods_or_agents_heard_or_problems_awaits_its_pods() -> None:
    raw = body()
    assert awaits_its_pods(status_of(raw, [], {}))
    problem = status_of(raw, [], {}, facts=StatusFacts(problem="no GPUPool named p"))
    assert not awaits_its_pods(problem)
    # Seen before the scheduler placed it, or placed with its agent not answering yet: the pass
    # that hears the agent supersedes this.
    unplaced = pod(raw, ip=None)
    assert unplaced.node is None
    starting = status_of(raw, [unplaced], {"m-0": report(AgentState.UNREACHABLE)})
    assert starting["replicas"][0]["state"] == "Starting"
    assert awaits_its_pods(starting)
    placed = replace(unplaced, node="gpu-node-0")
    assert awaits_its_pods(status_of(raw, [placed], {"m-0": report(AgentState.UNREACHABLE)}))
    # Its engine loading is start-up progress too: a pre-warm's Asleep supersedes it.
    loading = status_of(raw, [placed], {"m-0": report(AgentState.LOADING)})
    assert awaits_its_pods(loading)
    asleep = status_of(raw, [placed], {"m-0": report(AgentState.ASLEEP)})
    assert not awaits_its_pods(asleep)
    failing = replace(placed, failure=EngineFailure(2, "vLLM is crash-looping"))
    assert not awaits_its_pods(status_of(raw, [failing], {"m-0": report(AgentState.UNREACHABLE)}))


async def test_the_operator_holds_a_new_models_no_pods_status_for_the_next() -> None:
    kube = Kube(client.ApiClient(), status_window=0.01)
    written: list[tuple[tuple[str, str], dict[str, Any]]] = []

    async def write(key: tuple[str, str], status: dict[str, Any]) -> None:
        written.append((key, status))

    kube.model_status._write = write  # type: ignore[method-assign]
    raw = body()
    await kube.patch_model_status("ns", "m", status_of(raw, [], {}))
    await asyncio.sleep(0.05)  # past the window: still held
    assert written == []
    loading = status_of(raw, [pod(raw)], {"m-0": report(AgentState.LOADING)})
    await kube.patch_model_status("ns", "m", loading)
    await asyncio.sleep(0.05)  # start-up progress: held with the first
    assert written == []
    asleep = status_of(raw, [pod(raw)], {"m-0": report(AgentState.ASLEEP)})
    await kube.patch_model_status("ns", "m", asleep)
    await kube.model_status.drain()
    assert [s["phase"] for _, s in written] == ["Asleep"]
    # A model with a problem and no pods is written at once.
    problem = status_of(raw, [], {}, facts=StatusFacts(problem="no GPUPool named p"))
    await kube.patch_model_status("ns", "other", problem)
    await asyncio.sleep(0)  # its task writes it at once
    assert written[-1][0] == ("ns", "other")
    await kube.api.close()
