"""Node health for the node-loss rule (`reconcile.node_loss`), read on demand and kept briefly.

Only the nodes of pods whose agent does not answer are asked for (one GET each), so a healthy
fleet reads no Node at all; a node's answer is kept `ttl` seconds for every model on it. While
some are asked for, the whole node list is read once per `ttl` too: when most nodes are down at
once (`node_loss.disrupted`), no node is reported, so nothing is replaced. A read in flight is
shared: the many models that start at once all ask while the first read is on its way (at 1,000
models that was 777 node LISTs in one bring-up, each of every node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import Any

from ..reconcile.node_loss import NodeHealth, disrupted, node_health

log = logging.getLogger(__name__)

TTL_SECONDS = 10.0

GetNode = Callable[[str], Awaitable[dict[str, Any] | None]]
ListNodes = Callable[[], Awaitable[list[dict[str, Any]]]]


class NodeCache:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self._ttl = ttl
        self._seen: dict[str, tuple[float, NodeHealth]] = {}  # name -> (read at, health)
        self._disruption: tuple[float, bool] | None = None  # (read at, disrupted)
        self._reads: dict[str | None, asyncio.Future[Any]] = {}  # in flight: node (None: list)

    async def _once(self, key: str | None, read: Callable[[], Awaitable[Any]]) -> Any:
        """`read()`, or the answer of the same read already in flight."""
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = asyncio.ensure_future(read())
            pending.add_done_callback(lambda _f: self._reads.pop(key, None))
        return await asyncio.shield(pending)

    async def health(
        self,
        get_node: GetNode,
        names: Iterable[str],
        now: float,
        list_nodes: ListNodes | None = None,
    ) -> dict[str, NodeHealth]:
        """`now`: monotonic seconds. Empty while the cluster is disrupted."""
        wanted = sorted(set(names))
        if wanted and list_nodes is not None:
            if self._disruption is None or now - self._disruption[0] >= self._ttl:
                was = self._disruption is not None and self._disruption[1]
                self._disruption = (now, disrupted(await self._once(None, list_nodes)))
                if self._disruption[1] and not was:
                    log.warning("most nodes are not Ready: no pod is replaced for node loss")
            if self._disruption[1]:
                return {}
        out: dict[str, NodeHealth] = {}
        for name in wanted:
            cached = self._seen.get(name)
            if cached is None or now - cached[0] >= self._ttl:
                node = await self._once(name, partial(get_node, name))
                cached = (now, node_health(node))
                self._seen[name] = cached
            out[name] = cached[1]
        return out
