"""The agent's control API has one home (api.agent_protocol), read the same way on both sides."""

from __future__ import annotations

import ast
from pathlib import Path

import vllm_sleep
from vllm_sleep.api.agent_protocol import (
    REPORTED_STATES,
    UNREACHABLE_REPORT,
    AgentState,
    StateReport,
)
from vllm_sleep.controller.agents import parse_report

PACKAGE = Path(vllm_sleep.__file__).parent


def test_the_agents_json_reads_back_as_the_same_report() -> None:
    report = StateReport(state=AgentState.ASLEEP, level=2, held=3, since=1.5, version=7)
    assert parse_report(report.to_json()) == report


def test_a_state_this_operator_does_not_know_reads_as_unreachable() -> None:
    assert parse_report({"state": "hibernating", "version": 3}) is UNREACHABLE_REPORT
    assert parse_report(["not", "an", "object"]) is UNREACHABLE_REPORT


def test_a_newer_agents_extra_fields_are_ignored() -> None:
    assert parse_report({"state": "awake", "gpu_bytes": 5}).state is AgentState.AWAKE


def test_unreachable_is_the_operators_reading_never_an_agents_report() -> None:
    assert AgentState.UNREACHABLE not in REPORTED_STATES
    assert set(REPORTED_STATES) | {AgentState.UNREACHABLE} == set(AgentState)


def _enum_values(tree: ast.Module) -> list[tuple[str, set[str]]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            values = {
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            }
            found.append((node.name, values))
    return found


def test_no_second_enum_of_agent_states_outside_api() -> None:
    # The simulated vLLM (testing/sim) has its own engine states: it plays vLLM, not the agent.
    copies = []
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in ("api", "testing"):
            continue
        for name, values in _enum_values(ast.parse(path.read_text())):
            if {"asleep", "draining", "waking"} <= values:
                copies.append(f"{rel}: {name}")
    assert copies == []
