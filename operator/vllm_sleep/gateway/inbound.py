"""Pure request checks: the route table and the `model` field of a JSON body."""

from __future__ import annotations

import json
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
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit or inflater.unconsumed_tail:
            return BadRequest("The request body is too large.", "body_too_large", status=413)
        if not inflater.eof:
            continue
        return out
    return BadRequest("The request body could not be decoded.", "invalid_body")
