"""Content-Encoding of request bodies: gzip members, deflate, bounds, trailing bytes."""

from __future__ import annotations

import asyncio
import gzip
import zlib

import pytest

from vllm_sleep.gateway.inbound import MAX_GZIP_MEMBERS, BadRequest, decode_body_async

BODY = b'{"model": "m", "messages": []}'


def decode_body(body: bytes, encoding: str, limit: int) -> bytes | BadRequest:
    return asyncio.run(decode_body_async(body, encoding, limit))


def test_concatenated_gzip_members_are_all_decoded() -> None:
    # RFC 1952 §2.2: a gzip body is a series of members, and every one is part of it.
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
