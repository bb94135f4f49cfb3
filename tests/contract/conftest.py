"""Fixtures shared by the contract suites (real loopback HTTP, no cluster)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from vllm_sleep.testing.sim import EngineHost


@pytest.fixture
async def host() -> AsyncIterator[EngineHost]:
    """A simulator host with a tiny time scale: behaviour, not timing, is under test."""
    h = EngineHost(time_scale=0.002)
    yield h
    await h.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    """A client that ignores proxy settings from the environment (every call is loopback)."""
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        yield c
