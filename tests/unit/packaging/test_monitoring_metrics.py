"""The dashboard is well-formed Grafana JSON and every series it or the alerts query is one the
operator, the gateway or an agent exports (names read from their live metric registries)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from vllm_sleep.agent.gate import Gate
from vllm_sleep.agent.metrics import AgentMetrics
from vllm_sleep.agent.state import StateBoard
from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.model_status import ModelPhase
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.metrics import OperatorMetrics
from vllm_sleep.packaging import chart, monitoring

ROOT = Path(__file__).resolve().parents[3]
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exported() -> dict[str, set[str]]:
    """series name -> its label names, for every metric of the three processes."""
    registries: list[CollectorRegistry] = [
        OperatorMetrics().registry,
        GatewayMetrics().registry,
        AgentMetrics(Gate(max_held=1), StateBoard()).registry,
    ]
    out: dict[str, set[str]] = {}
    for registry in registries:
        for family in registry.collect():
            labels = set()
            for sample in family.samples:
                labels |= set(sample.labels) - {"le"}
            # Labelled metrics without children yet have no samples: read their declared labels.
            collector = registry._names_to_collectors.get(family.name)
            labels |= set(getattr(collector, "_labelnames", ()))
            for suffix in SUFFIXES[family.type]:
                out[family.name + suffix] = labels
    return out


def expressions() -> list[str]:
    dash = json.loads((ROOT / chart.CHART / "files" / "grafana-dashboard.json").read_text())
    rules = yaml.safe_load((ROOT / chart.CHART / "files" / "alerts.yaml").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    return exprs + [r["expr"] for g in rules["groups"] for r in g["rules"]]


SERIES = re.compile(r"\b(vllm_sleep_[a-z_]+)(?:\{([^}]*)\})?")
MATCHER = re.compile(r'(\w+)\s*(=~|!=|!~|=)\s*"([^"]*)"')
BY = re.compile(r"\bby \(([^)]*)\)")


def test_exported_names_are_read_from_the_code() -> None:
    names = exported()
    assert "vllm_sleep_transitions_total" in names and "vllm_sleep_agent_state" in names
    assert names["vllm_sleep_gateway_requests_total"] == {"model", "code"}


@pytest.mark.parametrize("expr", expressions())
def test_every_queried_series_and_label_is_exported(expr: str) -> None:
    names = exported()
    found = SERIES.findall(expr)
    assert found, expr
    labels_here: set[str] = set()
    for name, matchers in found:
        assert name in names, f"{name} is not exported by any component ({expr})"
        for label, _op, _value in MATCHER.findall(matchers):
            assert label in names[name], f"{name} has no label {label}"
        labels_here |= names[name]
    for group in BY.findall(expr):
        for label in (x.strip() for x in group.split(",")):
            assert label == "le" or label in labels_here, f"no series here has label {label}"


def test_label_values_the_alerts_match_exist() -> None:
    text = "\n".join(expressions())
    assert 'phase="Failed"' in text and ModelPhase.FAILED.value == "Failed"
    assert 'state="failed"' in text and AgentState.FAILED.value == "failed"


def test_dashboard_structure() -> None:
    dash: dict[str, Any] = json.loads(
        (ROOT / chart.CHART / "files" / "grafana-dashboard.json").read_text()
    )
    assert dash == monitoring.dashboard()
    for key, kind in (("uid", str), ("title", str), ("schemaVersion", int), ("panels", list)):
        assert isinstance(dash[key], kind), key
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in dash["panels"]:
        assert panel["type"] in {"timeseries", "stat", "gauge", "table", "bargauge"}
        assert panel["datasource"]["uid"] == "${datasource}"
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["w"] > 0 and pos["h"] > 0
        mine = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not (mine & cells), f"panel {panel['id']} overlaps another"
        cells |= mine
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for topic in ("phase", "wake", "held", "latency"):
        assert topic in titles


def test_alerts_have_what_a_prometheus_rule_needs() -> None:
    rules = monitoring.alerts()["groups"][0]["rules"]
    names = {r["alert"] for r in rules}
    assert {
        "VllmSleepModelFailed",
        "VllmSleepWakeTimeouts",
        "VllmSleepRequestsRejectedWhileWaking",
    } <= names
    for r in rules:
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]) and r["labels"]["severity"] in {
            "warning",
            "critical",
        }
        assert (
            r["annotations"]["summary"] and "docs/operations.md#" in r["annotations"]["description"]
        )
    ops = (ROOT / "docs" / "operations.md").read_text().lower()
    for name in names:  # each alert has a section saying what to do
        assert f"### {name.lower()}" in ops, name
