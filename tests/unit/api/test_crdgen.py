"""crds/ is generated from the models: committed files must be current and structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vllm_sleep.api import crdgen
from vllm_sleep.api.crds import all_crds, model_deployment_crd

ROOT = Path(__file__).resolve().parents[3]


def test_committed_crds_are_up_to_date() -> None:
    stale = crdgen.write(ROOT / "crds", check=True)
    assert stale == [], "run `make crds` (python -m vllm_sleep.api.crdgen)"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1
    assert crdgen.main(["--dir", str(tmp_path)]) == 0
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 0
    (tmp_path / "gpupools.vllm-sleep.io.yaml").write_text("# edited\n")
    assert crdgen.main(["--check", "--dir", str(tmp_path)]) == 1


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties",):
            for name, sub in (node.get(key) or {}).items():
                out += _walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_schema_is_structural(filename: str) -> None:
    schema = all_crds()[filename]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-int-or-string"), path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path


def test_printer_columns_match_the_design() -> None:
    version = model_deployment_crd()["spec"]["versions"][0]
    main = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert [n.upper() for n in main] == ["STATE", "READY", "AWAKE", "POOL", "LAST-ACTIVITY", "AGE"]
    assert version["subresources"] == {"status": {}}
    names = model_deployment_crd()["spec"]["names"]
    assert names["shortNames"] == ["mdep"]


def test_defaults_in_the_crd_are_go_durations() -> None:
    spec = model_deployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    props = spec["properties"]["spec"]["properties"]
    assert props["sleep"]["properties"]["idleTimeout"]["default"] == "10m"
    assert props["wake"]["properties"]["timeout"]["default"] == "2m"
    assert props["sleep"]["default"] == {}


# Items of core shapes (Toleration, metav1.Condition) are documented by Kubernetes itself.
_CORE_ITEMS = (".tolerations[].", ".conditions[].")


@pytest.mark.parametrize("filename", sorted(all_crds()))
def test_kubectl_explain_describes_every_field(filename: str) -> None:
    """`kubectl explain mdep.spec` / `gpool.status` show each field's description: none is
    left "<no description>" (object fields included: `explain mdep.spec.sleep` starts there)."""
    root = all_crds()[filename]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    missing = [
        path
        for top in ("spec", "status")
        for path, node in _walk(root["properties"][top], f".{top}")
        if "description" not in node
        and not path.endswith(("[]", "{}"))
        and not any(core in path for core in _CORE_ITEMS)
    ]
    assert missing == []
