"""`vllm-sleep operator`'s command line: a bad flag or missing credentials is one clear line,
never a traceback (a pod's crash loop shows only the log's tail)."""

from __future__ import annotations

import pytest

from vllm_sleep.controller import main


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--log-level=bogus"], "--log-level: invalid choice: 'BOGUS'"),
        (["--metrics-bind=8080"], "'8080' is not host:port"),
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


@pytest.mark.parametrize("kubeconfig", ["missing", "empty"])
def test_without_credentials_it_says_so_and_exits_1(
    kubeconfig: str,
    tmp_path: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / kubeconfig  # type: ignore[operator]
    if kubeconfig == "empty":
        path.write_text("")
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(main, "forgo_sync_client", lambda: None)  # keep this process' modules
    monkeypatch.setattr(main, "configure", lambda level: None)  # and its logging
    assert main.main(["--metrics-bind=127.0.0.1:0", "--health-bind=127.0.0.1:0"]) == 1
    assert "no Kubernetes credentials" in capsys.readouterr().err
