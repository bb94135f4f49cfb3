"""`vllm-sleep gateway` with a kubeconfig that is not one, or none at all: one line on stderr
naming the file or what to set, exit 1 (was a traceback), and no workers started for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vllm_sleep import serve
from vllm_sleep.gateway import main as gateway_main
from vllm_sleep.gateway.config import GatewayConfig
from vllm_sleep.gateway.kube_source import kube_client
from vllm_sleep.kubeconfig import DEFAULT_LOCATION, KubeconfigError


@pytest.fixture(autouse=True)
def _no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve, "configure", lambda *a, **k: None)  # keep pytest's logging


def _run(argv: list[str]) -> int:
    return gateway_main.main(["--host=127.0.0.1", "--port=0", "--workers=1", *argv])


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"", "is empty"), (b"a: [\n", "is not valid YAML"), (b"- a\n", "is not a kubeconfig")],
)
def test_a_bad_kubeconfig_is_one_line_naming_it_and_exit_1(
    content: bytes, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config"
    path.write_bytes(content)
    assert _run([f"--kubeconfig={path}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"vllm-sleep gateway: kubeconfig {path}: {problem}")


def test_no_credentials_is_one_line_saying_what_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from kubernetes_asyncio.config import kube_config

    # Not in a pod, and the client's default kubeconfig (read from $KUBECONFIG at import) absent.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", DEFAULT_LOCATION)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(
        KubeconfigError, match=r"no Kubernetes credentials \(no kubeconfig at .*--kubeconfig"
    ):
        asyncio.run(kube_client(None))


def test_the_supervisor_checks_once_instead_of_starting_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config"
    path.write_bytes(b"")
    started: list[object] = []

    async def supervise(*args: object) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(gateway_main, "supervise", supervise)
    config = GatewayConfig.from_cli(["--workers=2", f"--kubeconfig={path}"], {})
    with pytest.raises(KubeconfigError, match="is empty"):
        asyncio.run(gateway_main._supervise([], config, {"workers": 2}))
    assert started == []


def test_without_credentials_the_supervisor_says_so_once_instead_of_starting_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubernetes_asyncio.config import kube_config

    started: list[object] = []

    async def supervise(*args: object) -> int:
        started.append(args)
        return 0

    monkeypatch.setattr(gateway_main, "supervise", supervise)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", DEFAULT_LOCATION)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    config = GatewayConfig.from_cli(["--workers=2"], {})
    with pytest.raises(KubeconfigError, match=r"no Kubernetes credentials \(no kubeconfig at"):
        asyncio.run(gateway_main._supervise([], config, {"workers": 2}))
    assert started == []
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")  # in a pod: the workers load it
    asyncio.run(gateway_main._supervise([], config, {"workers": 2}))
    assert len(started) == 1
