"""`vllm-sleep`: the entry point's own arguments (each subcommand tests its own)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from vllm_sleep.cli import main


@pytest.mark.parametrize("arg", ["--version", "version"])
def test_version_prints_the_installed_packages(
    arg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([arg]) == 0
    assert capsys.readouterr().out.strip() == f"vllm-sleep {version('vllm-sleep-operator')}"


def test_an_unknown_command_is_refused_with_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--bogus"]) == 2
    assert "usage: vllm-sleep" in capsys.readouterr().err
