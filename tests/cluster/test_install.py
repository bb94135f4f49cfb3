"""The install paths a platform team uses are accepted by a real apiserver."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import Kube

ROOT = Path(__file__).resolve().parents[2]


def test_kustomize_base_applies_server_side(kube: Kube) -> None:
    rendered = kube.kubectl("kustomize", str(ROOT / "deploy" / "base")).stdout
    kinds = sorted(
        line.split(": ", 1)[1] for line in rendered.splitlines() if line.startswith("kind: ")
    )
    assert kinds.count("CustomResourceDefinition") == 2
    assert {"Deployment", "ClusterRole", "ServiceAccount", "Namespace"} <= set(kinds)
    # The namespace must exist for a server-side dry run of the namespaced objects.
    kube.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / "namespace.yaml"))
    out = kube.kubectl(
        "apply", "--dry-run=server", "-k", str(ROOT / "deploy" / "base"), check=False
    )
    assert out.returncode == 0, out.stderr
    assert "deployment.apps/vllm-sleep-operator" in out.stdout


def test_examples_are_valid_objects(kube: Kube, namespace: str) -> None:
    kube.apply_crds(ROOT / "crds")
    paths = sorted((ROOT / "deploy" / "examples").rglob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        for doc in docs:  # into the test's namespace, whatever the example names
            if doc["kind"] != "GPUPool":
                doc["metadata"]["namespace"] = namespace
        text = yaml.safe_dump_all(docs)
        out = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=text, check=False)
        assert out.returncode == 0, (path.name, out.stderr)
