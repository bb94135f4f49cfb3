"""Many models asking for the same node at once share one read (a big fleet's bring-up)."""

from __future__ import annotations

import asyncio
from typing import Any

from vllm_sleep.controller.nodes import NodeCache


def node(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }


async def test_concurrent_asks_share_one_get_and_one_list() -> None:
    gets: list[str] = []
    lists: list[int] = []

    async def get_node(name: str) -> dict[str, Any]:
        gets.append(name)
        await asyncio.sleep(0.01)  # the apiserver takes a while
        return node(name)

    async def list_nodes() -> list[dict[str, Any]]:
        lists.append(1)
        await asyncio.sleep(0.01)
        return [node("a"), node("b")]

    cache = NodeCache(ttl=10)
    answers = await asyncio.gather(
        *(cache.health(get_node, ["a"], 100.0, list_nodes) for _ in range(50))
    )
    assert all(a["a"].ready == "True" for a in answers)
    assert gets == ["a"]
    assert lists == [1]
    await cache.health(get_node, ["a"], 111.0, list_nodes)  # the ttl passed: read again
    assert gets == ["a", "a"] and lists == [1, 1]


async def test_a_failed_shared_read_fails_every_asker_and_the_next_ask_reads_again() -> None:
    calls: list[str] = []

    async def get_node(name: str) -> dict[str, Any]:
        calls.append(name)
        await asyncio.sleep(0.01)
        if len(calls) == 1:
            raise RuntimeError("apiserver unavailable")
        return node(name)

    cache = NodeCache(ttl=10)
    results = await asyncio.gather(
        *(cache.health(get_node, ["a"], 100.0) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    assert (await cache.health(get_node, ["a"], 100.0))["a"].ready == "True"
    assert calls == ["a", "a"]
