"""Surface review: Content-Encoding decoding, API keys file, the upstream Host, CLI bounds."""

from __future__ import annotations

import asyncio
import gzip
import os
import zlib
from pathlib import Path

import pytest

from vllm_sleep.gateway import GatewayConfig, auth
from vllm_sleep.gateway.auth import ApiKeys
from vllm_sleep.gateway.config import GatewayConfigError
from vllm_sleep.gateway.inbound import MAX_GZIP_MEMBERS, BadRequest, decode_body
from vllm_sleep.gateway.proxy import Retry, send
from vllm_sleep.h1 import ConnectError

BODY = b'{"model": "m", "messages": []}'

# -- Content-Encoding ------------------------------------------------------------------------


def test_concatenated_gzip_members_are_all_decoded() -> None:
    # RFC 1952 §2.2: a gzip body is a series of members; only the first was decoded.
    raw = gzip.compress(BODY[:10]) + gzip.compress(BODY[10:])
    assert decode_body(raw, "gzip", 1 << 20) == BODY
    assert decode_body(raw + b"\0\0\0", "gzip", 1 << 20) == BODY  # padding, as gzip.decompress


@pytest.mark.parametrize(
    ("raw", "encoding"),
    [
        (gzip.compress(BODY) + b"garbage", "gzip"),
        (gzip.compress(BODY) + b"\0\0junk", "gzip"),
        (zlib.compress(BODY) + b"x", "deflate"),
        (zlib.compress(BODY) + zlib.compress(BODY), "deflate"),  # zlib has no members
    ],
    ids=["gzip-garbage", "gzip-padding-garbage", "zlib-garbage", "zlib-twice"],
)
def test_bytes_after_the_compressed_stream_make_the_body_invalid(raw: bytes, encoding: str) -> None:
    out = decode_body(raw, encoding, 1 << 20)
    assert isinstance(out, BadRequest) and (out.status, out.code) == (400, "invalid_body")


def test_members_are_bounded_in_number_and_in_total_size() -> None:
    many = b"".join(gzip.compress(b" ") for _ in range(MAX_GZIP_MEMBERS + 1))
    out = decode_body(many, "gzip", 1 << 20)
    assert isinstance(out, BadRequest) and out.code == "invalid_body"
    # Each member under the bound, together over it: 413, not the sum of the parts.
    halves = gzip.compress(b" " * 600) * 2
    out = decode_body(halves, "gzip", 1000)
    assert isinstance(out, BadRequest) and (out.status, out.code) == (413, "body_too_large")
    assert decode_body(halves, "gzip", 1200) == b" " * 1200


def test_single_streams_still_decode() -> None:
    raw_deflate = zlib.compressobj(wbits=-15)
    raw = raw_deflate.compress(BODY) + raw_deflate.flush()
    for data, enc in (
        (gzip.compress(BODY), "GZIP "),
        (zlib.compress(BODY), "deflate"),
        (raw, "deflate"),
    ):
        assert decode_body(data, enc, 1 << 20) == BODY
    assert decode_body(gzip.compress(b""), "gzip", 10) == b""
    truncated = decode_body(gzip.compress(BODY)[:-4], "gzip", 1 << 20)
    assert isinstance(truncated, BadRequest) and truncated.code == "invalid_body"


# -- API keys file ---------------------------------------------------------------------------


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
    path.write_bytes(b"sk-one\n\xff\xfe-binary\n")  # raised UnicodeDecodeError out of check()
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


# -- the request head to a replica -----------------------------------------------------------


class _HeadPool:
    def __init__(self) -> None:
        self.head = b""

    async def request(self, host: str, port: int, head: bytes, body: bytes, **_: object) -> None:
        self.head = head
        raise ConnectError("refused")


def test_an_ipv6_replica_gets_a_bracketed_host() -> None:
    pool = _HeadPool()
    result = asyncio.run(
        send(pool, "http://[fd00::7]:8000", b"/v1/completions", b"", b"{}", None)  # type: ignore[arg-type]
    )
    assert isinstance(result, Retry)
    assert b"\r\nhost: [fd00::7]:8000\r\n" in pool.head
    asyncio.run(send(pool, "http://10.0.0.7:8000", b"/", b"", b"{}", None))  # type: ignore[arg-type]
    assert b"\r\nhost: 10.0.0.7:8000\r\n" in pool.head


# -- CLI bounds ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--retry-after", "-1"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--backend-port", "0"],
        ["--backend-port", "65536"],
        ["--wake-timeout", "nan"],
        ["--wake-timeout", "inf"],
        ["--connect-timeout", "nan"],
        ["--read-timeout", "nan"],
        ["--send-timeout", "nan"],
        ["--demand-interval", "nan"],
    ],
)
def test_out_of_range_flags_are_refused_with_the_flag_named(argv: list[str]) -> None:
    with pytest.raises(GatewayConfigError, match=argv[0]):
        GatewayConfig.from_cli(argv, {})


def test_valid_ports_still_pass() -> None:
    cfg = GatewayConfig.from_cli(["--port", "0", "--backend-port", "65535"], {})
    assert (cfg.port, cfg.backend_port) == (0, 65535)
