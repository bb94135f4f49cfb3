"""Pure request checks: the route table and the `model` field of a JSON body."""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass

# POST routes that carry a JSON body with "model" and go to the model's replicas. Multipart
# audio routes (no JSON "model" to route by without parsing forms) and /v1/responses (stored
# responses live on one replica; needs affinity the gateway does not have) are not routed.
INFERENCE_PATHS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/score"}
)
MAX_MODEL_NAME = 512


@dataclass(frozen=True)
class BadRequest:
    message: str
    code: str
    param: str | None = None
    status: int = 400


def parse_model(body: bytes) -> str | BadRequest:
    """The `model` of an OpenAI request body, or why the body is unusable."""
    if not body:
        return BadRequest("The request body is empty; a JSON object is required.", "invalid_body")
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return BadRequest("The request body is not valid JSON.", "invalid_json")
    if not isinstance(doc, dict):
        return BadRequest("The request body must be a JSON object.", "invalid_body")
    model = doc.get("model")
    if model is None:
        return BadRequest("you must provide a model parameter", "missing_model", "model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME:
        return BadRequest("`model` must be a non-empty string.", "invalid_model", "model")
    return model


def decode_body(body: bytes, encoding: str, limit: int) -> bytes | BadRequest:
    """The body with its Content-Encoding undone, bounded by `limit` after decompression.

    Done here rather than by aiohttp's server so a corrupt or oversized (zip bomb) body is a
    clean 400/413 instead of a parser error, and forwarded bodies are always identity-encoded.
    """
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "x-gzip", "deflate"):
        return BadRequest(
            f"Content-Encoding {enc[:40]!r} is not supported.", "unsupported_encoding", status=415
        )
    # wbits 47 accepts gzip and zlib headers; raw deflate (what some clients send) is -15.
    for wbits in (47, -15):
        out = _inflate(body, wbits, limit)
        if out is not None:
            return out
    return BadRequest("The request body could not be decoded.", "invalid_body")


_GZIP_MAGIC = b"\x1f\x8b"
_ZEROS = re.compile(rb"\x00*")
_FEED = 1 << 16  # input fed per call: keeps each member's `unused_data` copy small
MAX_GZIP_MEMBERS = 64


def _inflate(body: bytes, wbits: int, limit: int) -> bytes | BadRequest | None:
    """`body` inflated, a 413, or None when it is not one valid stream of this format.

    A gzip body may be several members (RFC 1952 §2.2; what `gzip.decompress`, curl and
    nginx accept): only the first was decoded, so a valid multi-member body was cut to its
    first member (400 invalid_json, or a shorter request). Bytes after the stream other than
    another member (zero padding aside, as gzip.decompress) make the body invalid: they were
    silently ignored. The members are bounded: each costs a decompressor.
    """
    view = memoryview(body)
    out: list[bytes] = []
    total = pos = members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            return None
        gzip_member = body[pos : pos + 2] == _GZIP_MAGIC
        inflater = zlib.decompressobj(wbits)
        while not inflater.eof:
            if pos >= len(body):
                return None  # truncated
            piece = view[pos : pos + _FEED]
            pos += len(piece)
            try:
                part = inflater.decompress(piece, limit + 1 - total)  # never 0: no limit
            except zlib.error:
                return None
            total += len(part)
            if total > limit or inflater.unconsumed_tail:
                return BadRequest("The request body is too large.", "body_too_large", status=413)
            out.append(part)
        pos -= len(inflater.unused_data)  # the bytes after this stream
        if gzip_member:
            pos = _ZEROS.match(body, pos).end()  # type: ignore[union-attr]
        if pos == len(body):
            return b"".join(out)
        if not (gzip_member and body[pos : pos + 2] == _GZIP_MAGIC):
            return None  # trailing garbage
