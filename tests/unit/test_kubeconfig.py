"""A kubeconfig that exists but is not one (empty, not YAML, not a mapping) is refused in one
line naming the file, by the check every process runs before its Kubernetes client reads it,
and by `vllm-sleep status` (the operator's and the gateway's are tested beside their flags)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from vllm_sleep.kubeconfig import DEFAULT_LOCATION, KubeconfigError, check_kubeconfig

VALID = b"""apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty"),
        (b"  \n# only a comment\n", "is empty"),
        (b"clusters: [unclosed\n", "is not valid YAML at line 2"),
        (b"a: b: c\n", "is not valid YAML at line 1"),
        (b"\xff\xfe\x00\x01", "is not a text file (not UTF-8)"),
        (b"- a\n- b\n", "is not a kubeconfig (a YAML list, not a mapping)"),
        (b"just words\n", "is not a kubeconfig (a YAML str, not a mapping)"),
        (b"contexts: 5\n", "is not a kubeconfig (contexts must be a list of entries with a name)"),
        (b"users: [u1]\n", "is not a kubeconfig (users must be a list of entries with a name)"),
    ],
)
def test_a_file_that_is_not_a_kubeconfig_is_named_with_its_problem(
    content: bytes, problem: str, tmp_path: Path
) -> None:
    path = tmp_path / "config"
    path.write_bytes(content)
    with pytest.raises(KubeconfigError) as e:
        check_kubeconfig(str(path))
    assert str(e.value).startswith(f"kubeconfig {path}: {problem}")


def test_a_kubeconfig_passes_and_the_missing_default_is_left_to_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config"
    path.write_bytes(VALID)
    assert check_kubeconfig(str(path))
    assert check_kubeconfig(os.pathsep.join([str(tmp_path / "missing"), str(path)]))  # merged
    assert not check_kubeconfig("")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config: in-cluster or no credentials
    assert not check_kubeconfig(DEFAULT_LOCATION)
    assert not check_kubeconfig(str(tmp_path / ".kube" / "config"))  # as the asyncio client has it


def test_a_named_kubeconfig_none_of_whose_files_exist_is_refused(tmp_path: Path) -> None:
    missing = os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")])
    with pytest.raises(KubeconfigError, match=re.escape(f"kubeconfig {missing}: no such file")):
        check_kubeconfig(missing)


def test_every_file_of_a_kubeconfig_list_is_checked(tmp_path: Path) -> None:
    good, empty = tmp_path / "good", tmp_path / "empty"
    good.write_bytes(VALID)
    empty.write_bytes(b"")
    with pytest.raises(KubeconfigError, match=re.escape(f"kubeconfig {empty}: is empty")):
        check_kubeconfig(os.pathsep.join([str(tmp_path / "missing"), str(good), str(empty)]))


def test_a_directory_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(KubeconfigError, match=re.escape(f"kubeconfig {tmp_path}: cannot be read")):
        check_kubeconfig(str(tmp_path))


@pytest.mark.parametrize(
    ("content", "problem"),
    [(b"a: [\n", "is not valid YAML"), (b"- a\n", "is not a kubeconfig"), (b"", "is empty")],
)
def test_the_cli_says_which_file_is_wrong_and_exits_1(
    content: bytes,
    problem: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from kubernetes.config import kube_config

    from vllm_sleep.ctl import main

    path = tmp_path / "config"
    path.write_bytes(content)
    # The client reads $KUBECONFIG once, at import: point its default location at the file.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert main(["status"]) == 1  # as without a kubeconfig
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"error: kubeconfig {path}: {problem}")
