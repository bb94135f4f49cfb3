"""Helpers for tests that drive simulated engines (this project's and other components')."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from .config import SimConfig
from .engine import EngineState, SimEngine
from .host import EngineHost
from .memory import GPUDevice


def config(
    *args: str, dev_mode: bool = True, env: Mapping[str, str] | None = None, host: str = "127.0.0.1"
) -> SimConfig:
    """A SimConfig from `vllm serve`-style args; binds `host` on a free port unless given."""
    argv = list(args)
    if not any(a == "--host" or a.startswith("--host=") for a in argv):
        argv += ["--host", host]
    if not any(a == "--port" or a.startswith("--port=") for a in argv):
        argv += ["--port", "0"]
    full_env = {"VLLM_SERVER_DEV_MODE": "1" if dev_mode else "0", **(env or {})}
    return SimConfig.from_cli(argv, full_env)


async def start(
    host: EngineHost,
    *args: str,
    device: GPUDevice | None = None,
    dev_mode: bool = True,
    env: Mapping[str, str] | None = None,
    wait: bool = True,
    memory_limit_bytes: int | None = None,
) -> SimEngine:
    """Start an engine and (by default) wait until it loaded."""
    engine = await host.start_engine(
        config(*args, dev_mode=dev_mode, env=env),
        device=device,
        memory_limit_bytes=memory_limit_bytes,
    )
    if wait:
        await engine.wait_loaded()
    return engine


async def wait_for_state(
    engine: SimEngine, *states: EngineState, timeout: float = 10.0
) -> EngineState:
    """Poll (cheaply) until the engine is in one of `states`."""
    async with asyncio.timeout(timeout):
        while engine.state not in states:  # noqa: ASYNC110 - derived from several fields
            await asyncio.sleep(0.005)
    return engine.state


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition on simulator state (tests only; the state has no single event)."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - see docstring
            await asyncio.sleep(0.005)
