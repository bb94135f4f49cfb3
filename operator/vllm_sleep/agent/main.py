"""`vllm-sleep agent ...`: run one agent until SIGTERM/SIGINT."""

from __future__ import annotations

from ..serve import cli_main, serve_until, stop_on_signals
from .agent import Agent
from .clock import Clock
from .config import AgentConfig, build_parser


def main(argv: list[str]) -> int:
    return cli_main(argv, "vllm-sleep agent", build_parser, AgentConfig.from_cli, _run)


async def _run(config: AgentConfig) -> None:
    with stop_on_signals() as stop:
        await serve_until(Agent(config, clock=Clock()), stop)
