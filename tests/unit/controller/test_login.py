"""kopf logs in through kubernetes_asyncio, with the sync `kubernetes` client kept out of the
operator's process (`controller.main.forgo_sync_client`): from a kubeconfig and in-cluster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import kopf
import pytest
from kopf._core.intents.causes import Activity
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import incluster_config, kube_config

from vllm_sleep.controller.handlers import register

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:6443", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: kubeconfig-token}
contexts:
- name: x
  context: {cluster: c, user: u}
current-context: x
"""


@pytest.fixture
def without_sync_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's process: `import kubernetes` raises, as if it were not installed."""
    for name in [m for m in sys.modules if m == "kubernetes" or m.startswith("kubernetes.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kubernetes", None)
    # Loading a config sets kubernetes_asyncio's process-wide default: put it back afterwards.
    monkeypatch.setattr(Configuration, "_default", Configuration._default)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_PORT", raising=False)


async def login(**extra: Any) -> kopf.ConnectionInfo | None:
    registry = kopf.OperatorRegistry()
    register(registry, None)  # type: ignore[arg-type]  # logging in reads no shared state
    [handler] = registry._activities.get_handlers(activity=Activity.AUTHENTICATION)
    result: kopf.ConnectionInfo | None = await handler.fn(
        logger=kopf.LocalObjectLogger(body=kopf.Body({}), settings=kopf.OperatorSettings()),
        settings=kopf.OperatorSettings(),
        **extra,
    )
    return result


@pytest.mark.usefixtures("without_sync_client")
async def test_login_from_a_kubeconfig_without_the_sync_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    info = await login()
    assert info is not None
    assert (info.server, info.token, info.insecure) == (
        "https://127.0.0.1:6443",
        "kubeconfig-token",
        True,
    )


@pytest.mark.usefixtures("without_sync_client")
async def test_login_in_cluster_without_the_sync_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("service-account-token")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    info = await login()
    assert info is not None
    assert info.server == "https://10.96.0.1:443"
    assert info.token == "service-account-token"
    assert info.ca_path == str(tmp_path / "ca.crt")


def test_the_operator_process_does_not_load_the_sync_client() -> None:
    # In a fresh interpreter, as `vllm-sleep operator` starts: its module, then kopf and the
    # handlers as `run` imports them.
    code = (
        "import sys\n"
        "from vllm_sleep.controller import main\n"
        "main.forgo_sync_client()\n"
        "import kopf\n"
        "from vllm_sleep.controller import handlers\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'kubernetes'"
        " and sys.modules[m] is not None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
