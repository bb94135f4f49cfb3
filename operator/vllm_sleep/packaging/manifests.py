"""deploy/ (kustomize) generated from code: RBAC from rbac.py, CRDs from crds/ (pydantic).

`python -m vllm_sleep.packaging.manifests` writes deploy/base; `--check` fails when the committed
files differ (a unit test runs it), so deploy/ cannot drift from the code.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from ..api.names import CONTROL_PORT
from .rbac import cluster_role, cluster_role_binding, gateway_rules, operator_rules

NAMESPACE = "vllm-sleep-system"
IMAGE = "ghcr.io/vllm-sleep/vllm-sleep-operator:0.1.0"
LABELS = {"app.kubernetes.io/part-of": "vllm-sleep-operator"}
_ = CONTROL_PORT


def _deployment(
    name: str, args: list[str], ports: list[dict[str, Any]], probe_port: str
) -> dict[str, Any]:
    labels = {**LABELS, "app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": name,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": name,
                            "image": IMAGE,
                            "command": ["vllm-sleep"],
                            "args": args,
                            "ports": ports,
                            "env": [{"name": "VLLM_SLEEP_AGENT_IMAGE", "value": IMAGE}],
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", "port": probe_port},
                                "periodSeconds": 10,
                            },
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"memory": "512Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
        },
    }


def base() -> dict[str, Any]:
    """file name -> manifest(s) of deploy/base."""

    def sa(n: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": n, "namespace": NAMESPACE, "labels": LABELS},
        }

    operator = _deployment(
        "vllm-sleep-operator",
        ["operator", "--metrics-bind=0.0.0.0:8080", "--health-bind=0.0.0.0:8081"],
        [{"name": "metrics", "containerPort": 8080}, {"name": "health", "containerPort": 8081}],
        "health",
    )
    gateway = _deployment(
        "vllm-sleep-gateway",
        ["gateway", "--host=0.0.0.0", "--port=8000"],
        [{"name": "http", "containerPort": 8000}],
        "http",
    )
    gateway["spec"]["replicas"] = 2  # stateless: N replicas
    container = gateway["spec"]["template"]["spec"]["containers"][0]
    # Out of the Service until its first list of models is in, and at once when it begins
    # to stop (it answers /readyz 503 then; held requests get 503 shutting_down).
    container["readinessProbe"] = {
        "httpGet": {"path": "/readyz", "port": "http"},
        "periodSeconds": 2,
        "failureThreshold": 1,
    }
    # Request bodies are held whole (up to --max-body-bytes, 32 MiB) and parsed for `model`:
    # a few large ones at once need more than the operator's 512Mi.
    container["resources"]["limits"]["memory"] = "1Gi"
    gateway_svc = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "vllm-sleep-gateway", "namespace": NAMESPACE, "labels": LABELS},
        "spec": {
            "selector": {"app.kubernetes.io/name": "vllm-sleep-gateway"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return {
        "namespace.yaml": [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": NAMESPACE, "labels": LABELS},
            }
        ],
        "rbac.yaml": [
            sa("vllm-sleep-operator"),
            cluster_role("vllm-sleep-operator", operator_rules(), LABELS),
            cluster_role_binding(
                "vllm-sleep-operator", "vllm-sleep-operator", "vllm-sleep-operator", NAMESPACE
            ),
            sa("vllm-sleep-gateway"),
            cluster_role("vllm-sleep-gateway", gateway_rules(), LABELS),
            cluster_role_binding(
                "vllm-sleep-gateway", "vllm-sleep-gateway", "vllm-sleep-gateway", NAMESPACE
            ),
        ],
        "operator.yaml": [operator],
        "gateway.yaml": [gateway, gateway_svc],
        "kustomization.yaml": [
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [
                    "crds.yaml",
                    "namespace.yaml",
                    "rbac.yaml",
                    "operator.yaml",
                    "gateway.yaml",
                ],
            }
        ],
    }


def render(docs: list[dict[str, Any]]) -> str:
    header = "# Generated by `python -m vllm_sleep.packaging.manifests`; do not edit.\n"
    return header + "---\n".join(yaml.safe_dump(d, sort_keys=False) for d in docs)


def crds(root: Path) -> list[dict[str, Any]]:
    """The CRDs (generated into crds/ from the pydantic models), copied into deploy/base so the
    base is self-contained: kustomize refuses files outside a base, and GitOps tools often
    fetch only the base's folder."""
    files = sorted((root / "crds").glob("*.yaml"))
    return [yaml.safe_load(p.read_text()) for p in files]


def write(root: Path, check: bool) -> list[str]:
    stale = []
    targets = {root / "deploy" / "base" / name: docs for name, docs in base().items()}
    targets[root / "deploy" / "base" / "crds.yaml"] = crds(root)
    for path, docs in targets.items():
        text = render(docs)
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return stale


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--check", action="store_true")
    p.add_argument("--root", type=Path, default=Path.cwd())
    args = p.parse_args(argv)
    stale = write(args.root, args.check)
    if stale:
        print(
            "stale generated files (run `make manifests`):\n  " + "\n  ".join(stale),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
