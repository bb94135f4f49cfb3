"""`vllm-sleep agent ...`: run one agent until SIGTERM/SIGINT."""

from __future__ import annotations

from ..serve import cli_main, event_loop_runner, serve_until, stop_on_signals
from .agent import Agent
from .clock import Clock
from .config import AgentConfig, build_parser


def main(argv: list[str]) -> int:
    return cli_main(
        argv,
        "vllm-sleep agent",
        build_parser,
        AgentConfig.from_cli,
        _run,
        runner=event_loop_runner(),  # the public port's proxy path, like the gateway's
    )


async def _run(config: AgentConfig) -> None:
    with stop_on_signals() as stop:
        await serve_until(Agent(config, clock=Clock()), stop)
