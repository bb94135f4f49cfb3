"""Node health for the node-loss rule (`reconcile.node_loss`), read on demand and kept briefly.

Only the nodes of pods whose agent does not answer are asked for (one GET each), so a healthy
fleet reads no Node at all; a node's answer is kept `ttl` seconds for every model on it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..reconcile.node_loss import NodeHealth, node_health

TTL_SECONDS = 10.0

GetNode = Callable[[str], Awaitable[dict[str, Any] | None]]


class NodeCache:
    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self._ttl = ttl
        self._seen: dict[str, tuple[float, NodeHealth]] = {}  # name -> (read at, health)

    async def health(
        self, get_node: GetNode, names: Iterable[str], now: float
    ) -> dict[str, NodeHealth]:
        """`now`: monotonic seconds."""
        out: dict[str, NodeHealth] = {}
        for name in sorted(set(names)):
            cached = self._seen.get(name)
            if cached is None or now - cached[0] >= self._ttl:
                cached = (now, node_health(await get_node(name)))
                self._seen[name] = cached
            out[name] = cached[1]
        return out
