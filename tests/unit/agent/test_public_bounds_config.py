"""The agent's public-port bounds on its command line (the gateway's, see docs/security.md)."""

from __future__ import annotations

import pytest

from vllm_sleep.agent import AgentConfig
from vllm_sleep.agent.config import AgentConfigError

pytestmark = pytest.mark.unit

ENV = {"VLLM_SLEEP_CONTROL_TOKEN": "t"}


def test_defaults_are_the_gateways() -> None:
    cfg = AgentConfig.from_cli([], ENV)
    assert (cfg.header_timeout, cfg.body_timeout) == (60.0, 60.0)
    assert (cfg.max_body_bytes, cfg.max_buffered_bytes) == (32 << 20, 256 << 20)


def test_flags_set_them() -> None:
    argv = ["--header-timeout", "5", "--body-timeout", "0", "--max-body-bytes", "1024"]
    cfg = AgentConfig.from_cli([*argv, "--max-buffered-bytes", "4096"], ENV)
    assert (cfg.header_timeout, cfg.body_timeout) == (5.0, 0.0)  # 0 = none
    assert (cfg.max_body_bytes, cfg.max_buffered_bytes) == (1024, 4096)


@pytest.mark.parametrize(
    "argv",
    [["--header-timeout", "-1"], ["--max-body-bytes", "0"], ["--max-buffered-bytes", "-1"]],
)
def test_invalid_bounds_are_refused(argv: list[str]) -> None:
    with pytest.raises(AgentConfigError):
        AgentConfig.from_cli(argv, ENV)
