"""Waiting on an in-process agent's state board, for the contract suites that start agents."""

from __future__ import annotations

import asyncio

from vllm_sleep.agent import Agent


async def wait_state(agent: Agent, *states: str, timeout: float = 10.0) -> None:
    """Return once the agent's state is one of `states` (values such as "awake"); TimeoutError
    after `timeout` seconds."""
    async with asyncio.timeout(timeout):
        while agent.board.state.value not in states:
            await agent.board.wait_change(agent.board.version, 1.0)
