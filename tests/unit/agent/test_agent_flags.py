"""`vllm-sleep agent`'s flags are AgentConfig's fields: each documented, each setting its field."""

from __future__ import annotations

import pytest

from vllm_sleep.agent.config import AgentConfig, AgentConfigError, build_parser

pytestmark = pytest.mark.unit

ENV = {"VLLM_SLEEP_CONTROL_TOKEN": "t"}


def test_every_flag_is_a_documented_field() -> None:
    flags = [a for a in build_parser()._actions if a.option_strings and a.dest != "help"]
    for action in flags:
        if action.dest == "token_file":
            continue  # read into control_token
        assert action.dest in AgentConfig.model_fields, action.dest
        assert action.help == AgentConfig.model_fields[action.dest].description, action.dest


def test_flags_are_typed_by_their_fields() -> None:
    cfg = AgentConfig.from_cli(["--engine-memory-bytes", "1024", "--access-log"], ENV)
    assert (cfg.engine_memory_bytes, cfg.access_log) == (1024, True)
    with pytest.raises(AgentConfigError, match="--engine-memory-bytes"):
        AgentConfig.from_cli(["--engine-memory-bytes", "lots"], ENV)
