"""`vllm-sleep operator`'s command line: a bad flag or missing credentials is one clear line,
never a traceback (a pod's crash loop shows only the log's tail)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_sleep.controller import main
from vllm_sleep.kubeconfig import DEFAULT_LOCATION


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--log-level=bogus"], "--log-level: invalid choice: 'BOGUS'"),
        (["--metrics-bind=8080"], "'8080' is not host:port"),
        (["--metrics-bind=:8080"], "':8080' is not host:port"),  # kopf's URL needs the host
        (["--health-bind=0.0.0.0:http"], "'0.0.0.0:http' is not host:port"),
    ],
)
def test_a_bad_flag_is_refused_naming_it(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        main.parser().parse_args(argv)
    assert e.value.code == 2
    assert needle in capsys.readouterr().err


def test_the_log_level_is_case_insensitive() -> None:
    assert main.parser().parse_args(["--log-level=debug"]).log_level == "DEBUG"
    assert main.parser().parse_args(["--metrics-bind=0.0.0.0:8080"]).metrics_bind == "0.0.0.0:8080"


def test_without_credentials_it_says_so_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real start-up, not in a pod and with no kubeconfig file (no ~/.kube/config). The
    client read $KUBECONFIG at import: the test sets its default location instead."""
    from kubernetes_asyncio.config import kube_config

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", DEFAULT_LOCATION)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(main, "forgo_sync_client", lambda: None)  # keep this process' modules
    monkeypatch.setattr(main, "configure", lambda level: None)  # and its logging
    assert main.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("vllm-sleep operator: no Kubernetes credentials (")
    assert err.rstrip().endswith("run it in a pod with its ServiceAccount, or set KUBECONFIG")


def test_a_kubeconfig_named_but_missing_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """KUBECONFIG names a file that does not exist: the one line names it (the client would log
    a warning, then report an invalid kubeconfig naming nothing)."""
    from kubernetes_asyncio.config import kube_config

    missing = str(tmp_path / "missing")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", missing)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(main, "forgo_sync_client", lambda: None)
    monkeypatch.setattr(main, "configure", lambda level: None)
    assert main.main([]) == 1
    assert capsys.readouterr().err == f"vllm-sleep operator: kubeconfig {missing}: no such file\n"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"apiVersion: v1\nclusters: [unclosed\n", "is not valid YAML at line 3"),
        (b"- just\n- a list\n", "is not a kubeconfig (a YAML list, not a mapping)"),
        (b"\xff\xfe\x00", "is not a text file"),
    ],
)
def test_a_kubeconfig_that_is_not_one_is_one_line_naming_it_and_exits_1(
    content: bytes,
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The real start-up: the file cannot be loaded, so it never reaches a cluster. The client
    read $KUBECONFIG at import: the test points its default location at the file."""
    from kubernetes_asyncio.config import kube_config

    path = tmp_path / "config"
    path.write_bytes(content)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setattr(main, "forgo_sync_client", lambda: None)
    monkeypatch.setattr(main, "configure", lambda level: None)
    assert main.main([]) == 1  # as without credentials
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"vllm-sleep operator: kubeconfig {path}: {problem}" in err
