"""`vllm-sleep agent ...`: run one agent until SIGTERM/SIGINT."""

from __future__ import annotations

import os

from ..serve import cli_main, serve_until, stop_on_signals
from .agent import Agent
from .clock import Clock
from .config import AgentConfig, AgentConfigError, build_parser


def main(argv: list[str]) -> int:
    return cli_main(
        argv,
        prog="vllm-sleep agent",
        print_help=lambda: build_parser().print_help(),
        load=lambda args: AgentConfig.from_cli(args, os.environ),
        errors=AgentConfigError,
        run=_run,
    )


async def _run(config: AgentConfig) -> None:
    with stop_on_signals() as stop:
        await serve_until(Agent(config, clock=Clock()), stop)
