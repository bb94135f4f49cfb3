"""The values model behind values.schema.json refuses bad values, naming them.

Helm checks the generated JSON schema (tests/cluster/test_helm.py runs the same cases through
`helm template`); here the pydantic model, which the schema is made from.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vllm_sleep.packaging import reference, values

BAD: list[tuple[dict[str, Any], str]] = [
    ({"operator": {"replicas": -1}}, "operator.replicas"),
    ({"operator": {"replicas": 2, "leaderElection": False}}, "operator.replicas"),
    ({"gateway": {"replicas": "two"}}, "gateway.replicas"),
    ({"image": {"repository": "Bad Image!"}}, "image.repository"),
    ({"image": {"tag": "v1 beta"}}, "image.tag"),
    ({"image": {"digest": "md5:abc"}}, "image.digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "image.pullPolicy"),
    ({"gateway": {"service": {"type": "Ingress"}}}, "gateway.service.type"),
    ({"gateway": {"service": {"port": 70000}}}, "gateway.service.port"),
    ({"gateway": {"service": {"nodePort": 80}}}, "gateway.service.nodePort"),
    ({"gateway": {"resources": {"limits": {"memory": "lots"}}}}, "gateway.resources.limits"),
    ({"operator": {"resources": {"requests": {"gpu": "1"}}}}, "operator.resources.requests"),
    ({"networkPolicy": {"modelNamespaces": ["Team_A"]}}, "networkPolicy.modelNamespaces"),
    ({"networkPolicy": {"monitoringNamespace": "-mon"}}, "networkPolicy.monitoringNamespace"),
    ({"operator": {"logLevel": "LOUD"}}, "operator.logLevel"),
    ({"metrics": {"serviceMonitor": {"interval": "soon"}}}, "metrics.serviceMonitor.interval"),
    ({"replicas": 3}, "replicas"),
    ({"gateway": {"replica": 3}}, "gateway.replica"),
]


@pytest.mark.parametrize(("bad", "path"), BAD, ids=[p for _, p in BAD])
def test_bad_value_is_refused_by_name(bad: dict[str, Any], path: str) -> None:
    with pytest.raises(ValidationError) as e:
        values.Values.model_validate(bad)
    located = {".".join(str(x) for x in err["loc"]) for err in e.value.errors()}
    assert any(loc.startswith(path) for loc in located), located


def test_defaults_validate_and_give_the_image() -> None:
    v = values.Values.model_validate(values.defaults())
    assert v.image.reference() == "ghcr.io/vllm-sleep/vllm-sleep-operator:0.1.0"
    digest = "sha256:" + "a" * 64
    assert values.Image(digest=digest).reference().endswith("@" + digest)


def test_schema_forbids_unknown_values_everywhere() -> None:
    schema = values.schema()
    for name, node in schema["$defs"].items():
        assert node.get("additionalProperties") is False, name
    assert schema["additionalProperties"] is False


def test_example_specs_are_checked_against_the_crds() -> None:
    props = values.schema()["$defs"]
    sharing = props["Example"]["properties"]["spec"]["properties"]["sharing"]
    assert "Magic" not in sharing["enum"] and values.EXAMPLE_POOL.spec["sharing"] in sharing["enum"]
    md = props["NamespacedExample"]["properties"]["spec"]
    assert set(md["required"]) <= set(values.EXAMPLE_MODEL.spec)


def test_reference_describes_every_value() -> None:
    rows = [r for r in reference.table().splitlines()[2:] if r.startswith("| `")]
    assert len(rows) > 40
    undocumented = [r.split("|")[1].strip() for r in rows if not r.split("|")[4].strip()]
    assert undocumented == []


def test_the_charts_readme_carries_every_value() -> None:
    """`helm show readme`: a packaged chart travels without docs/, so its README has the values
    reference itself (the same table as docs/install.md's)."""
    from pathlib import Path

    from vllm_sleep.packaging import chart, reference

    readme = chart.files(Path(__file__).resolve().parents[3])[chart.CHART / "README.md"].decode()
    assert reference.table() in readme
    assert "helm install vllm-sleep charts/vllm-sleep-operator" in readme
