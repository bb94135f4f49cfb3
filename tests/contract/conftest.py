"""Fixtures shared by the contract suites (real loopback HTTP, no cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from vllm_sleep.testing.sim import EngineHost


@pytest.fixture
async def host() -> AsyncIterator[EngineHost]:
    """A simulator host with a tiny time scale: behaviour, not timing, is under test."""
    h = EngineHost(time_scale=0.002)
    yield h
    await h.stop_all()
