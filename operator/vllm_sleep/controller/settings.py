"""The operator's settings, from its flags (controller/main.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    agent_image: str
    resync_seconds: float = 30.0  # upper bound between passes even when nothing kicks
