"""The API keys file: encodings, reloads, and no keys meaning no access."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vllm_sleep.gateway import auth
from vllm_sleep.gateway.auth import ApiKeys


@pytest.fixture
def reload_always(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "RELOAD_EVERY", -1.0)


def test_a_utf8_bom_does_not_make_the_first_key_unusable(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"\xef\xbb\xbfsk-first\r\nsk-second\r\n")
    keys = ApiKeys(str(path))
    assert keys.check("Bearer sk-first") and keys.check("Bearer sk-second")


def test_a_non_ascii_key_matches_the_same_bytes_in_the_header(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_bytes("sk-clé\n".encode())
    keys = ApiKeys(str(path))
    # h1 hands header values over as Latin-1 text of the raw bytes the client sent.
    assert keys.check("Bearer " + "sk-clé".encode().decode("latin-1"))
    assert not keys.check("Bearer sk-cl")


def test_a_reload_of_a_file_that_is_not_utf8_keeps_serving(
    tmp_path: Path, reload_always: None
) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"sk-one\n")
    keys = ApiKeys(str(path))
    path.write_bytes(b"sk-one\n\xff\xfe-binary\n")  # undecodable bytes: keys are bytes
    assert keys.check("Bearer sk-one")


def test_a_rewrite_that_keeps_the_mtime_is_reloaded(tmp_path: Path, reload_always: None) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"sk-revoked\nsk-kept\n")
    keys = ApiKeys(str(path))
    assert keys.check("Bearer sk-revoked")
    st = os.stat(path)
    path.write_bytes(b"sk-kept\n")  # `cp -p` / rsync -t of the new Secret content
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not keys.check("Bearer sk-revoked")
    assert keys.check("Bearer sk-kept")


def test_no_keys_loaded_refuses_everything(tmp_path: Path, reload_always: None) -> None:
    path = tmp_path / "keys"
    path.write_bytes(b"# none yet\n\n")
    keys = ApiKeys(str(path))
    assert not keys.check("Bearer ") and not keys.check("Bearer x") and not keys.check(None)
    path.write_bytes(b"sk-a\n")
    assert keys.check("Bearer sk-a")
    path.unlink()  # a vanished file keeps the last keys (a Secret update in progress)
    assert keys.check("Bearer sk-a") and not keys.check("Bearer sk-b")
