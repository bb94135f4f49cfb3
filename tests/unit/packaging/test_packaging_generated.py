"""One source: crds/, deploy/base and the chart's generated files agree with the code."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import yaml

from vllm_sleep.api.crds import all_crds
from vllm_sleep.packaging import chart, manifests, values
from vllm_sleep.packaging.rbac import gateway_rules, operator_rules

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / chart.CHART


def test_every_generated_file_is_current() -> None:
    assert manifests.write(ROOT, check=True) == [], "run `make manifests`"


def test_chart_crds_are_byte_copies_of_crds() -> None:
    ours = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert set(ours) == set(all_crds()) and ours == shipped


def test_base_crds_are_the_same_objects() -> None:
    base = list(yaml.safe_load_all((ROOT / "deploy/base/crds.yaml").read_text()))
    assert base == [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]


def _rules_in_tpl(name: str) -> list[dict[str, list[str]]]:
    text = (CHART / "templates" / "_generated.tpl").read_text()
    m = re.search(r'\{\{- define "' + re.escape(name) + r'" \}\}\n(.*?)\{\{- end \}\}', text, re.S)
    assert m, name
    rules: list[dict[str, list[str]]] = yaml.safe_load(m.group(1))
    return rules


def test_chart_and_base_rbac_are_rbac_py() -> None:
    assert _rules_in_tpl("vso.operatorRules") == operator_rules()
    assert _rules_in_tpl("vso.gatewayRules") == gateway_rules()
    roles = {
        d["metadata"]["name"]: d["rules"]
        for d in yaml.safe_load_all((ROOT / "deploy/base/rbac.yaml").read_text())
        if d["kind"] == "ClusterRole"
    }
    assert roles == {"vllm-sleep-operator": operator_rules(), "vllm-sleep-gateway": gateway_rules()}


def test_values_yaml_and_schema_come_from_the_values_model() -> None:
    assert yaml.safe_load((CHART / "values.yaml").read_text()) == values.defaults()
    schema = json.loads((CHART / "values.schema.json").read_text())
    spec = schema["$defs"]["Example"]["properties"]["spec"]
    assert spec == values.json_schema(values.crd_spec_schema("gpupools"))
    assert "sharing" in spec["properties"] and "enum" in spec["properties"]["sharing"]


def test_check_reports_a_hand_edited_file(tmp_path: Path) -> None:
    for sub in ("crds", "deploy", "charts", "docs"):
        shutil.copytree(ROOT / sub, tmp_path / sub)
    assert manifests.write(tmp_path, check=True) == []
    edited = tmp_path / chart.CHART / "crds" / "gpupools.vllm-sleep.io.yaml"
    edited.write_text(edited.read_text() + "# hand edit\n")
    assert manifests.write(tmp_path, check=True) == [str(edited)]
    manifests.write(tmp_path, check=False, only_crds=True)
    assert manifests.write(tmp_path, check=True) == []
