"""`vllm-sleep agent ...`: run one agent until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from ..logs import configure
from .agent import Agent
from .clock import Clock
from .config import AgentConfig, AgentConfigError, build_parser


def main(argv: list[str]) -> int:
    configure()
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return 0
    try:
        config = AgentConfig.from_cli(argv, os.environ)
    except AgentConfigError as e:
        print(e, file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(config))
    except OSError as e:  # port taken, address not available
        print(f"vllm-sleep agent: {e}", file=sys.stderr)
        return 1
    return 0


async def _run(config: AgentConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Agent(config, clock=Clock()):
        await stop.wait()
