"""`vllm-sleep sim --help` against docs/simulator.md's flag tables and the parser's flag sets:
a flag documented, parsed or described in only one of the three fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vllm_sleep.testing.sim import args
from vllm_sleep.testing.sim.config import SimConfig
from vllm_sleep.testing.sim.main import main
from vllm_sleep.testing.sim.usage import usage

DOC = Path(__file__).parents[3] / "docs" / "simulator.md"
_FLAG = re.compile(r"--[a-z0-9][a-z0-9-]*")
_ENV = re.compile(r"VLLM_(?:SIM_)?[A-Z0-9_]*[A-Z0-9]")


def _table(heading: str) -> list[list[str]]:
    """The cells of the first Markdown table under `heading` (escaped `\\|` stays in a cell)."""
    text = DOC.read_text()
    start = text.index(heading)
    rows: list[list[str]] = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            if not line.startswith("| ---"):
                rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
        elif rows:
            break
    return rows[1:]  # past the header row


def _code_flags(cell: str) -> set[str]:
    return {f for code in re.findall(r"`([^`]*)`", cell) for f in _FLAG.findall(code)}


def documented_vllm_flags() -> set[str]:
    rows = _table("## `vllm serve` arguments")
    return {f for row in rows if row[0] != "anything else" for f in _code_flags(row[0])}


def documented_sim_flags() -> set[str]:
    return {f for row in _table("## Simulator settings") for f in _code_flags(row[0])}


def documented_sim_envs() -> set[str]:
    return {e for row in _table("## Simulator settings") for e in _ENV.findall(row[1])}


def _in_help(token: str, text: str) -> bool:
    # Whole tokens only: --kv-cache-memory must not be satisfied by --kv-cache-memory-bytes.
    return re.search(rf"(?<![\w-]){re.escape(token)}(?![\w-])", text) is not None


def test_the_doc_tables_parse() -> None:
    assert documented_vllm_flags()
    assert documented_sim_flags()
    assert documented_sim_envs()


def test_every_documented_flag_is_in_help() -> None:
    text = usage()
    missing = sorted(
        f for f in documented_vllm_flags() | documented_sim_flags() if not _in_help(f, text)
    )
    assert missing == [], f"docs/simulator.md documents flags --help leaves out: {missing}"


def test_every_documented_env_is_in_help() -> None:
    text = usage()
    missing = sorted(e for e in documented_sim_envs() if not _in_help(e, text))
    assert missing == [], f"docs/simulator.md documents env --help leaves out: {missing}"


def test_the_doc_lists_exactly_the_flags_the_parser_reads() -> None:
    parsed_vllm = args.VALUE_FLAGS | args.MULTI_FLAGS | args.BOOL_FLAGS
    assert documented_vllm_flags() == parsed_vllm
    assert documented_sim_flags() == args.SIM_FLAGS


def test_every_parsed_flag_is_in_help() -> None:
    text = usage()
    every = args.VALUE_FLAGS | args.MULTI_FLAGS | args.BOOL_FLAGS | args.SIM_FLAGS
    assert sorted(f for f in every if not _in_help(f, text)) == []


def test_help_says_what_happens_to_other_flags() -> None:
    # The parser skips unknown flags with a warning; --help must not promise they are used.
    assert "skipped with a warning" in usage()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_and_exits_0(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["org/m-8B", flag]) == 0
    assert capsys.readouterr().out.strip() == usage()


def test_help_states_the_defaults_the_parser_applies() -> None:
    cfg = SimConfig.from_cli(["m"], {})
    lines = usage().splitlines()
    for flag, value in [
        ("--port", cfg.port),
        ("--max-model-len", cfg.max_model_len),
        ("--max-num-seqs", cfg.max_num_seqs),
        ("--profile", cfg.profile),
        ("--weight-allocations", cfg.weight_allocations),
        ("--time-scale", cfg.time_scale),
        ("--default-max-tokens", cfg.default_max_tokens),
    ]:
        line = next(x for x in lines if x.strip().startswith(f"{flag} "))
        assert f"default {value}" in line, line
