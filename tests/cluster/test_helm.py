"""The Helm chart with the real helm and kubectl: lint, render, install, upgrade, uninstall.

Rendering is compared object by object with the kustomize base and overlays (one source: both
come from packaging/), bad values must fail naming the value, and the chart's ServiceAccounts may
do exactly what packaging/rbac.py grants, nothing more. NetworkPolicies are checked as objects:
no CNI enforces them on the local control plane.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import Kube
from vllm_sleep.packaging import base, names, values
from vllm_sleep.packaging.rbac import Rule, gateway_rules, operator_rules

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "vllm-sleep-operator"
Obj = dict[str, Any]
Key = tuple[str, str | None, str]


@pytest.fixture(scope="module")
def helm_bin() -> str:
    from vllm_sleep.testing.cluster import build

    return str(build.ensure_all()["helm"] / "helm")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=check, timeout=180)


def key(d: Obj) -> Key:
    return (d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"])


def objects(text: str) -> dict[Key, Obj]:
    """Rendered YAML -> objects by key, without the labels only Helm adds."""
    out = {}
    for d in yaml.safe_load_all(text):
        if not d:
            continue
        for label in names.HELM_ONLY_LABELS:
            d["metadata"].get("labels", {}).pop(label, None)
        out[key(d)] = d
    return out


def template(helm: str, *args: str, namespace: str = names.NAMESPACE) -> dict[Key, Obj]:
    out = run(helm, "template", "vso", str(CHART), "-n", namespace, "--include-crds", *args)
    return objects(out.stdout)


def kustomize(kube: Kube, overlay: str) -> dict[Key, Obj]:
    return objects(kube.kubectl("kustomize", str(ROOT / "deploy" / overlay)).stdout)


def test_lint_strict(helm_bin: str) -> None:
    out = run(helm_bin, "lint", "--strict", str(CHART), check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_default_render_is_the_kustomize_base(helm_bin: str, kube: Kube) -> None:
    chart = template(helm_bin)
    kust = kustomize(kube, "base")
    # Helm does not create its release namespace; everything else is the same object.
    kust.pop(("Namespace", None, names.NAMESPACE))
    assert set(chart) == set(kust)
    for k in kust:
        assert chart[k] == kust[k], k


CHANGED: Obj = {
    "image": {"repository": "registry.example:5000/ml/vso", "digest": "sha256:" + "b" * 64},
    "imagePullSecrets": [{"name": "regcred"}],
    "operator": {
        "watchNamespaces": ["team-a", "team-b"],
        "logLevel": "DEBUG",
        "agentImage": "registry.example:5000/ml/agent:1",
        "resources": {"requests": {"cpu": 1}, "limits": {"memory": "2Gi"}},
        "podDisruptionBudget": {"enabled": False},
        "scheduling": {"nodeSelector": {"pool": "system"}},
        "leaderElection": False,  # no --leader-elect, the Recreate strategy
    },
    "gateway": {
        "replicas": 4,
        "apiKeysSecret": "gateway-keys",
        "extraArgs": ["--demand-interval=5"],
        "service": {"type": "NodePort", "nodePort": 30080, "annotations": {"a": "b"}},
        "scheduling": {"tolerations": [{"key": "x", "operator": "Exists"}]},
    },
    "exposedNames": {"team-b": ["qwen-*"], "team-a": ["team-a-*", "shared-*"]},
    "networkPolicy": {
        "modelNamespaces": ["team-a", "team-b"],
        "publicPortFromNamespaces": ["batch"],
        "gatewayFrom": [{"namespaceSelector": {"matchLabels": {"ingress": "true"}}}],
        "monitoringNamespace": "monitoring",
    },
}


def helm_merge(defaults: Obj, overrides: Obj) -> Obj:
    """Helm's coalescing: maps merge key by key, everything else replaces."""
    out = dict(defaults)
    for k, v in overrides.items():
        out[k] = (
            helm_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _values_file(tmp_path: Path, vals: Obj) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(vals))
    return str(path)


def test_render_with_changed_values_is_packaging_base(helm_bin: str, tmp_path: Path) -> None:
    """Every value the kustomize base also knows renders as packaging/base.py builds it."""
    chart = template(helm_bin, "-f", _values_file(tmp_path, CHANGED))
    v = values.Values.model_validate(helm_merge(values.defaults(), CHANGED))
    expected = {key(d): d for docs in base.base(v).values() for d in docs}
    expected.pop(("Namespace", None, names.NAMESPACE))
    crds = {k for k in chart if k[0] == "CustomResourceDefinition"}
    assert set(chart) - crds == set(expected)
    for k, obj in expected.items():
        assert chart[k] == json.loads(json.dumps(obj)), k


def _policies(rendered: dict[Key, Obj]) -> dict[Key, Obj]:
    return {k: d for k, d in rendered.items() if k[0] == "NetworkPolicy"}


def test_network_policies_as_objects(helm_bin: str, tmp_path: Path) -> None:
    pols = _policies(template(helm_bin, "-f", _values_file(tmp_path, CHANGED)))
    ns = names.NAMESPACE
    operator_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vllm-sleep-operator"}},
    }
    gateway_peer = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "vllm-sleep-gateway"}},
    }
    monitoring = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    for model_ns in ("team-a", "team-b"):
        spec = pols[("NetworkPolicy", model_ns, names.MODEL_POLICY)]["spec"]
        assert spec["podSelector"] == {"matchLabels": {"vllm-sleep.io/component": "model-server"}}
        assert spec["policyTypes"] == ["Ingress"]
        by_port = {r["ports"][0]["port"]: r["from"] for r in spec["ingress"]}
        assert set(by_port) == {8000, 8002}
        # control port: the operator (and the monitoring namespace for /metrics), nobody else
        assert by_port[8002] == [operator_peer, monitoring]
        # public port: the gateway and the namespaces opened by value
        batch = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "batch"}}}
        assert by_port[8000] == [gateway_peer, batch]
    op = pols[("NetworkPolicy", ns, "vllm-sleep-operator")]["spec"]
    assert op["ingress"] == [
        {"from": [monitoring], "ports": [{"protocol": "TCP", "port": "metrics"}]}
    ]
    gw = pols[("NetworkPolicy", ns, "vllm-sleep-gateway")]["spec"]
    assert gw["ingress"] == [
        {
            "ports": [{"protocol": "TCP", "port": "http"}],
            "from": [{"namespaceSelector": {"matchLabels": {"ingress": "true"}}}, monitoring],
        }
    ]
    # defaults: the operator takes no connection at all; the gateway takes clients from anywhere
    defaults = _policies(template(helm_bin))
    assert defaults[("NetworkPolicy", ns, "vllm-sleep-operator")]["spec"]["ingress"] == []
    assert "from" not in defaults[("NetworkPolicy", ns, "vllm-sleep-gateway")]["spec"]["ingress"][0]
    assert _policies(template(helm_bin, "--set", "networkPolicy.enabled=false")) == {}


def _crds_and_rbac(rendered: dict[Key, Obj]) -> dict[Key, Obj]:
    kinds = {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ServiceAccount"}
    return {k: d for k, d in rendered.items() if k[0] in kinds}


@pytest.mark.parametrize("overlay", ["overlays/dev", "overlays/production"])
def test_overlays_have_the_charts_crds_and_rbac(helm_bin: str, kube: Kube, overlay: str) -> None:
    kust = kustomize(kube, overlay)
    ours = _crds_and_rbac(kust)
    assert len([k for k in ours if k[0] == "CustomResourceDefinition"]) == 2
    assert ours == _crds_and_rbac(template(helm_bin))
    if overlay.endswith("production"):  # its policies are the chart's with a monitoring namespace
        chart = template(helm_bin, "--set", "networkPolicy.monitoringNamespace=monitoring")
        assert _policies(kust) == _policies(chart)
        gateway = kust[("Deployment", names.NAMESPACE, names.GATEWAY)]
        assert gateway["spec"]["replicas"] >= 3
    else:
        assert _policies(kust) == {}


BAD_VALUES = [
    ("operator.replicas=-1", "/operator/replicas"),
    # Two replicas need leader election: the error names the setting to change with them.
    ("operator.replicas=2,operator.leaderElection=false", "/operator/leaderElection"),
    ("gateway.replicas=two", "/gateway/replicas"),
    ("image.repository=Bad Image!", "/image/repository"),
    ("image.tag=v1 beta", "/image/tag"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("gateway.service.type=Ingress", "/gateway/service/type"),
    ("gateway.service.port=70000", "/gateway/service/port"),
    ("gateway.resources.limits.memory=lots", "/gateway/resources/limits/memory"),
    ("networkPolicy.modelNamespaces[0]=Team_A", "/networkPolicy/modelNamespaces/0"),
    ("networkPolicy.enabled=maybe", "/networkPolicy/enabled"),
    ("operator.logLevel=LOUD", "/operator/logLevel"),
    ("metrics.serviceMonitor.interval=soon", "/metrics/serviceMonitor/interval"),
    ("examples.gpuPool.spec.sharing=Magic", "/examples/gpuPool/spec/sharing"),
    ("examples.modelDeployment.spec.replicas=-2", "/examples/modelDeployment/spec/replicas"),
    ("replicas=3", "'replicas' not allowed"),
]


@pytest.mark.parametrize(("setting", "named"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_bad_value_fails_helm_install_naming_it(
    helm_bin: str, kube: Kube, setting: str, named: str
) -> None:
    out = run(
        helm_bin,
        "install",
        "vso-bad",
        str(CHART),
        f"--kubeconfig={kube.kubeconfig}",
        "-n",
        "vso-never-created",
        "--set",
        setting,
        check=False,
    )
    assert out.returncode != 0
    assert named in out.stderr, out.stderr


@pytest.fixture
def release(kube: Kube, helm_bin: str) -> Iterator[tuple[str, str]]:
    """A namespace for the release and one for models; the release uninstalled at the end."""
    ns = f"vso-helm-{uuid.uuid4().hex[:6]}"
    models = f"vso-models-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", models)
    try:
        yield ns, models
    finally:
        run(helm_bin, "uninstall", "vso", "-n", ns, f"--kubeconfig={kube.kubeconfig}", check=False)
        kube.kubectl("delete", "namespace", ns, models, "--wait=false", check=False)


def _get(kube: Kube, *args: str) -> Obj | None:
    out = kube.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(out.stdout) if out.returncode == 0 else None


def _helm(helm: str, kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    return run(helm, *args, f"--kubeconfig={kube.kubeconfig}", check=False)


def test_install_upgrade_uninstall(helm_bin: str, kube: Kube, release: tuple[str, str]) -> None:
    ns, models = release
    # --take-ownership: the e2e suite applies deploy/base's ClusterRoles (same names) directly.
    out = _helm(
        helm_bin,
        kube,
        "install",
        "vso",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--take-ownership",
        "--set",
        f"networkPolicy.modelNamespaces={{{models}}}",
    )
    assert out.returncode == 0, out.stderr
    assert "port-forward svc/vllm-sleep-gateway" in out.stdout  # NOTES.txt
    for kind in ("deployment", "service", "serviceaccount", "poddisruptionbudget"):
        for name in (names.OPERATOR, names.GATEWAY):
            assert _get(kube, kind, name, "-n", ns), (kind, name)
    assert _get(kube, "networkpolicy", names.MODEL_POLICY, "-n", models)
    role = _get(kube, "clusterrole", names.OPERATOR)
    assert role and role["rules"] == operator_rules()
    binding = _get(kube, "clusterrolebinding", names.GATEWAY)
    assert binding and binding["subjects"][0]["namespace"] == ns
    assert _get(kube, "crd", "modeldeployments.vllm-sleep.io")

    def upgrade(*args: str) -> subprocess.CompletedProcess[str]:
        return _helm(helm_bin, kube, "upgrade", "vso", str(CHART), "-n", ns, *args)

    out = upgrade(
        "--reuse-values",
        "--set",
        "gateway.replicas=3,gateway.service.type=NodePort,networkPolicy.enabled=false",
    )
    assert out.returncode == 0, out.stderr
    gateway = _get(kube, "deployment", names.GATEWAY, "-n", ns)
    assert gateway and gateway["spec"]["replicas"] == 3
    svc = _get(kube, "service", names.GATEWAY, "-n", ns)
    assert svc and svc["spec"]["type"] == "NodePort"
    assert _get(kube, "networkpolicy", names.MODEL_POLICY, "-n", models) is None
    bad = upgrade("--set", "operator.replicas=3,operator.leaderElection=false")
    assert bad.returncode != 0 and "/operator/leaderElection" in bad.stderr

    out = _helm(helm_bin, kube, "uninstall", "vso", "-n", ns, "--wait")
    assert out.returncode == 0, out.stderr
    assert _get(kube, "deployment", names.OPERATOR, "-n", ns) is None
    assert _get(kube, "clusterrole", names.OPERATOR) is None
    # What uninstall leaves (docs/install.md): the CRDs, hence every ModelDeployment and GPUPool.
    assert _get(kube, "crd", "modeldeployments.vllm-sleep.io")


def _can_i(kube: Kube, ns: str, sa: str, where: str) -> dict[str, set[str]]:
    out = kube.kubectl(
        "auth", "can-i", "--list", f"--as=system:serviceaccount:{ns}:{sa}", "-n", where
    ).stdout
    granted: dict[str, set[str]] = {}
    for line in out.splitlines()[1:]:
        cols = line.split()
        if not cols or cols[0].startswith("["):  # non-resource URLs (discovery, /healthz)
            continue
        verbs = line[line.rindex("[") + 1 : line.rindex("]")].split()
        granted.setdefault(cols[0], set()).update(verbs)
    return granted


# What every authenticated identity may do (the bootstrap system:basic-user role).
EVERYONE = {
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
    "selfsubjectreviews.authentication.k8s.io",
}


def _expected(rules: list[Rule]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                # kubectl's spelling: resource.group/subresource
                head, _, sub = resource.partition("/")
                name = (f"{head}.{group}" if group else head) + (f"/{sub}" if sub else "")
                out.setdefault(name, set()).update(rule["verbs"])
    return out


@pytest.mark.parametrize(
    ("sa", "rules"), [(names.OPERATOR, operator_rules), (names.GATEWAY, gateway_rules)]
)
def test_service_accounts_can_do_exactly_what_rbac_py_grants(
    helm_bin: str, kube: Kube, release: tuple[str, str], sa: str, rules: Any
) -> None:
    ns, models = release
    out = _helm(
        helm_bin,
        kube,
        "install",
        "vso",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--take-ownership",
    )
    assert out.returncode == 0, out.stderr
    for where in (ns, models):
        granted = _can_i(kube, ns, sa, where)
        extra = {r: v for r, v in granted.items() if r not in EVERYONE}
        assert extra == _expected(rules()), where


def test_optional_objects_render_from_the_generated_files(helm_bin: str, kube: Kube) -> None:
    from vllm_sleep.packaging import monitoring

    sets = (
        "metrics.serviceMonitor.enabled=true,metrics.podMonitor.enabled=true,"
        "metrics.prometheusRule.enabled=true,metrics.dashboard.enabled=true,"
        "metrics.dashboard.namespace=grafana,examples.gpuPool.enabled=true,"
        "examples.modelDeployment.enabled=true"
    )
    out = template(helm_bin, "--set", sets)
    dash = out[("ConfigMap", "grafana", "vllm-sleep-dashboard")]
    assert dash["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dash["data"]["vllm-sleep.json"]) == monitoring.dashboard()
    rule = out[("PrometheusRule", names.NAMESPACE, "vllm-sleep")]
    assert rule["spec"] == monitoring.alerts()
    monitors = {k[2]: d for k, d in out.items() if k[0] in {"ServiceMonitor", "PodMonitor"}}
    assert monitors[names.OPERATOR]["spec"]["endpoints"][0]["port"] == "metrics"
    assert monitors[names.GATEWAY]["spec"]["endpoints"][0]["port"] == "http"
    agents = monitors["vllm-sleep-agents"]["spec"]
    assert agents["podMetricsEndpoints"][0]["port"] == "control"
    assert agents["selector"]["matchLabels"] == names.MODEL_POD_SELECTOR
    assert agents["namespaceSelector"] == {"matchNames": ["default"]}
    # The example objects are what the apiserver accepts (CRDs from the chart's crds/).
    kube.apply_crds(CHART / "crds")
    examples = [d for k, d in out.items() if k[0] in {"GPUPool", "ModelDeployment"}]
    assert len(examples) == 2
    dry = kube.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(examples), check=False
    )
    assert dry.returncode == 0, dry.stderr


def _start(argv: list[str], kubeconfig: Path, log: Path) -> subprocess.Popen[bytes]:
    import os
    import sys

    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "vllm_sleep.cli", *argv],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_lifecycle_under_the_charts_service_accounts(
    helm_bin: str, kube: Kube, release: tuple[str, str], tmp_path: Path
) -> None:
    """The operator and the gateway, as local processes holding only tokens of the chart's
    ServiceAccounts, take a model through load, pre-warm sleep, a wake on a request through the
    gateway, and deletion."""
    import httpx

    from e2e.helpers import apply, chat, events, model_manifest, wait_for, wait_phase
    from vllm_sleep.testing.cluster.tokens import kubeconfig_with_token

    ns, models = release
    out = _helm(
        helm_bin,
        kube,
        "install",
        "vso",
        str(CHART),
        "-n",
        ns,
        "--create-namespace",
        "--take-ownership",
        # The processes run here, not as pods: no Deployment replicas.
        "--set",
        "operator.replicas=0,gateway.replicas=0",
    )
    assert out.returncode == 0, out.stderr

    def token_config(sa: str) -> Path:
        token = kube.kubectl("create", "token", sa, "-n", ns, "--duration=1h").stdout.strip()
        return kubeconfig_with_token(kube.kubeconfig, sa, token, tmp_path / f"{sa}.kubeconfig")

    operator = _start(
        [
            "operator",
            f"--namespace={models}",
            f"--metrics-bind=127.0.0.1:{_free_port()}",
            f"--health-bind=127.0.0.1:{_free_port()}",
            "--resync-seconds=5",
        ],
        token_config(names.OPERATOR),
        tmp_path / "operator.log",
    )
    port = _free_port()
    gateway = _start(
        ["gateway", "--host=127.0.0.1", f"--port={port}", f"--namespace={models}"],
        token_config(names.GATEWAY),
        tmp_path / "gateway.log",
    )
    url = f"http://127.0.0.1:{port}"
    try:
        apply(kube, model_manifest("llama", models, sleep={"idleTimeout": "1h"}))
        wait_phase(kube, models, "llama", "Asleep", timeout=120)  # loaded, then pre-warm sleep
        wait_for(
            lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, what="gateway ready"
        )
        # Held at the gateway, which renews the demand Lease; the operator wakes the model.
        r = httpx.post(f"{url}/v1/chat/completions", json=chat("llama"), timeout=90)
        assert r.status_code == 200, r.text
        wait_phase(kube, models, "llama", "Awake", timeout=30)
        reasons = {e.reason for e in events(kube, models, "llama")}
        assert {"Slept", "Woke"} <= reasons, reasons
        kube.kubectl("delete", "mdep", "llama", "-n", models, "--timeout=60s")
    finally:
        _stop(gateway)
        _stop(operator)
    log = (tmp_path / "operator.log").read_text(errors="replace")
    assert "forbidden" not in log.lower(), log[-3000:]  # no call was refused on the way
