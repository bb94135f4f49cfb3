from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vllm_sleep.agent import AgentConfig, AgentConfigError, AgentState
from vllm_sleep.agent.state import StateBoard


async def test_long_poll_returns_on_change_or_timeout() -> None:
    board = StateBoard()
    v = board.version
    await board.wait_change(v, 0.01)  # times out quietly
    waiter = asyncio.create_task(board.wait_change(v, 5))
    await asyncio.sleep(0)
    board.set(AgentState.AWAKE)
    await asyncio.wait_for(waiter, 1)
    assert board.version > v
    await board.wait_change(v, 5)  # stale version: immediate


def test_setting_the_same_state_is_not_news() -> None:
    board = StateBoard()
    board.set(AgentState.ASLEEP, level=1)
    v, since = board.version, board.since
    board.set(AgentState.ASLEEP, level=1)
    assert (board.version, board.since) == (v, since)


def test_from_cli_parses_everything() -> None:
    cfg = AgentConfig.from_cli(
        [
            "--listen-host",
            "127.0.0.5",
            "--public-port",
            "9000",
            "--control-port=9002",
            "--upstream",
            "http://127.0.0.1:8001/",
            "--hold-timeout",
            "2.5",
            "--max-held",
            "7",
            "--drain-timeout",
            "3",
        ],
        {"VLLM_SLEEP_CONTROL_TOKEN": "s3cr3t\n"},
    )
    assert (cfg.listen_host, cfg.public_port, cfg.control_port) == ("127.0.0.5", 9000, 9002)
    assert cfg.upstream == "http://127.0.0.1:8001"
    assert (cfg.hold_timeout, cfg.max_held, cfg.drain_timeout) == (2.5, 7, 3.0)
    assert cfg.control_token.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(cfg)


def test_defaults_match_the_pod_layout() -> None:
    cfg = AgentConfig.from_cli([], {"VLLM_SLEEP_CONTROL_TOKEN": "t"})
    assert (cfg.public_port, cfg.control_port, cfg.upstream) == (
        8000,
        8002,
        "http://127.0.0.1:8001",
    )


def test_token_file_wins_over_env(tmp_path: Path) -> None:
    f = tmp_path / "token"
    f.write_text("from-file\n")
    cfg = AgentConfig.from_cli(["--token-file", str(f)], {"VLLM_SLEEP_CONTROL_TOKEN": "env"})
    assert cfg.control_token.get_secret_value() == "from-file"


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        ([], {}),  # no token at all
        ([], {"VLLM_SLEEP_CONTROL_TOKEN": "  "}),
        (["--token-file", "/nonexistent/token"], {}),
        (["--bogus"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
        (["--public-port", "x"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
        (["--public-port", "70000"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
        (["--upstream", "ftp://h"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
        (["--upstream", "http://h:1/v1"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
        (["--hold-timeout", "-1"], {"VLLM_SLEEP_CONTROL_TOKEN": "t"}),
    ],
)
def test_bad_command_lines_raise(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(AgentConfigError):
        AgentConfig.from_cli(argv, env)


def test_main_exits_2_on_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    from vllm_sleep.agent.main import main

    assert main(["--bogus"]) == 2
    assert "vllm-sleep agent" in capsys.readouterr().err
