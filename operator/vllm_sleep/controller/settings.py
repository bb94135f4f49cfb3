"""The operator's settings, from its flags (controller/main.py)."""

from __future__ import annotations

from dataclasses import dataclass

from ..reconcile.node_loss import NODE_LOST_SECONDS


@dataclass(frozen=True)
class Settings:
    agent_image: str
    resync_seconds: float = 30.0  # upper bound between passes even when nothing kicks
    node_lost_seconds: float = NODE_LOST_SECONDS  # a node not Ready this long: its pods replaced
