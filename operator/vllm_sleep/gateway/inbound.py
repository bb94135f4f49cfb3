"""Request checks: the route table, a body's Content-Encoding, and its JSON `model` field.

What a body may cost is bounded before and while it is parsed, not only by its size: a small
compressed body can inflate to `--max-body-bytes` of `[{},{},...]`, which as Python objects is
twenty times that and minutes of CPU. Bodies over INLINE_PARSE are therefore never turned into
objects: an incremental parser (yajl, via ijson) walks them slice by slice, yielding to the
event loop between slices, counting tokens and nesting, and keeping only the top-level
`model` value.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import Generator
from dataclasses import dataclass
from typing import TypeVar

import ijson

# The routes, and which body field names the model, are api.routes.GATEWAY_ROUTES; multipart
# forms are read in form.py.
MAX_MODEL_NAME = 512


@dataclass(frozen=True)
class BadRequest:
    message: str
    code: str
    param: str | None = None
    status: int = 400


_BRACE = ord("{")
_JSON_SPACE = " \t\n\r"
_RAW_DECODE = json.JSONDecoder().raw_decode  # stateless: json.loads' own default decoder


def parse_model(body: bytes) -> str | BadRequest:
    """The `model` of an OpenAI request body, or why the body is unusable."""
    if not body:
        return BadRequest("The request body is empty; a JSON object is required.", "invalid_body")
    try:
        if body[0] == _BRACE and body[1:2] != b"\x00":
            # json.loads(body) without its per-call encoding detection and two regex scans:
            # a body opening with `{` and no NUL after it is UTF-8 by json's own rule
            # (json.detect_encoding); it is decoded as json.loads would, and what follows
            # the object may only be JSON whitespace, as json.loads requires.
            text = body.decode("utf-8", "surrogatepass")
            doc, end = _RAW_DECODE(text)
            if end != len(text) and text[end:].strip(_JSON_SPACE):
                raise ValueError("extra data after the JSON object")
        else:
            doc = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return BadRequest("The request body is not valid JSON.", "invalid_json")
    if not isinstance(doc, dict):
        return BadRequest("The request body must be a JSON object.", "invalid_body")
    return check_model(doc.get("model", _MISSING))


_T = TypeVar("_T")

# Bodies up to this are parsed whole (json.loads): whatever they hold, they cost at most a few
# MiB and well under a millisecond. Larger ones go through `scan_model`.
INLINE_PARSE = 64 << 10
_SLICE = 32 << 10  # bytes fed to the incremental parser between two yields to the loop
_OPEN = frozenset({"start_map", "start_array"})
_CLOSE = frozenset({"end_map", "end_array"})


@dataclass(frozen=True)
class JsonLimits:
    max_tokens: int = 1 << 22  # keys and values (a container counts once)
    max_depth: int = 128


async def read_model(body: bytes, limits: JsonLimits) -> str | BadRequest:
    """`parse_model`, with what a large body may cost bounded and the event loop kept free."""
    if len(body) <= INLINE_PARSE:
        return parse_model(body)
    return await scan_model(body, limits)


async def scan_model(body: bytes, limits: JsonLimits) -> str | BadRequest:
    """The top-level `model` of a JSON object, found without building the document.

    The whole body is still checked to be one JSON value (as json.loads would); the last
    `model` key wins (as json.loads). Past `limits`: 413 (tokens) or 400 (depth).
    """
    events: list[tuple[str, object]] = ijson.sendable_list()
    parser = ijson.basic_parse_coro(events)  # numbers as int or Decimal: any size, as JSON
    depth = tokens = 0
    first = True
    want = False  # the next value is the top-level `model`
    model: object = _MISSING
    try:
        for start in range(0, len(body), _SLICE):
            parser.send(body[start : start + _SLICE])
            for event, value in events:
                if first:
                    first = False
                    if event != "start_map":
                        return BadRequest("The request body must be a JSON object.", "invalid_body")
                if event in _OPEN:
                    depth += 1
                    if depth > limits.max_depth:
                        return BadRequest(
                            f"The request body nests deeper than {limits.max_depth}.",
                            "body_too_deep",
                        )
                    if want:
                        model, want = _NOT_A_STRING, False
                elif event in _CLOSE:
                    depth -= 1
                    tokens -= 1  # a container counts once
                elif want:
                    model, want = value, False
                elif depth == 1 and event == "map_key":
                    want = value == "model"
            tokens += len(events)
            del events[:]
            if tokens > limits.max_tokens:
                return BadRequest(
                    f"The request body holds more than {limits.max_tokens} JSON tokens.",
                    "body_too_complex",
                    status=413,
                )
            await asyncio.sleep(0)  # one slice at a time: other requests run in between
        parser.close()
    except ijson.JSONError:
        return BadRequest("The request body is not valid JSON.", "invalid_json")
    if first:  # a lone number reports itself only at the end: valid JSON, not an object
        return BadRequest("The request body must be a JSON object.", "invalid_body")
    return check_model(model)


class _Marker:
    pass


_MISSING = _Marker()
_NOT_A_STRING = _Marker()


MISSING_MODEL = "missing_model"  # the `code` of a body that names no model


def check_model(model: object) -> str | BadRequest:
    if model is _MISSING or model is None:
        return BadRequest("you must provide a model parameter", MISSING_MODEL, "model")
    if not isinstance(model, str) or not model or len(model) > MAX_MODEL_NAME:
        return BadRequest("`model` must be a non-empty string.", "invalid_model", "model")
    return model


async def decode_body_async(body: bytes, encoding: str, limit: int) -> bytes | BadRequest:
    """The body with its Content-Encoding undone, bounded by `limit` after decompression.

    Done by the gateway itself so a corrupt or oversized (zip bomb) body is a clean 400/413,
    never a parser error, and forwarded bodies are always identity-encoded. It yields to the
    event loop after each _OUT bytes it produces (a small body can inflate to `limit`: one
    uninterrupted call would stall every other request).
    """
    steps = _decode(body, encoding, limit)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        await asyncio.sleep(0)


_Steps = Generator[None, None, _T]


def _decode(body: bytes, encoding: str, limit: int) -> _Steps[bytes | BadRequest]:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return body
    if enc not in ("gzip", "x-gzip", "deflate"):
        return BadRequest(
            f"Content-Encoding {enc[:40]!r} is not supported.", "unsupported_encoding", status=415
        )
    # wbits 47 accepts gzip and zlib headers; raw deflate (what some clients send) is -15.
    for wbits in (47, -15):
        out = yield from _inflate(body, wbits, limit)
        if out is not None:
            return out
    return BadRequest("The request body could not be decoded.", "invalid_body")


_GZIP_MAGIC = b"\x1f\x8b"
_ZEROS = re.compile(rb"\x00*")
_FEED = 1 << 16  # input fed per call: keeps each member's `unused_data` copy small
_OUT = 1 << 20  # output taken per call
MAX_GZIP_MEMBERS = 64


def _inflate(body: bytes, wbits: int, limit: int) -> _Steps[bytes | BadRequest | None]:
    """`body` inflated, a 413, or None when it is not one valid stream of this format.

    A gzip body may be several members (RFC 1952 §2.2; as `gzip.decompress`, curl and nginx
    accept): every member is decoded. Bytes after the stream other than another member (zero
    padding aside, as gzip.decompress) make the body invalid, never silently dropped. The
    members are bounded: each costs a decompressor. Output is taken _OUT bytes at a time into
    one buffer, so decoding costs about twice the decoded size at its peak (the buffer and the
    result), not zlib's growing output blocks on top.
    """
    view = memoryview(body)
    out = bytearray()
    pos = members = 0
    while True:
        members += 1
        if members > MAX_GZIP_MEMBERS:
            return None
        gzip_member = body[pos : pos + 2] == _GZIP_MAGIC
        inflater = zlib.decompressobj(wbits)
        tail = b""
        piece: bytes | memoryview
        while not inflater.eof:
            if tail:
                piece = tail  # input left over when the last call filled _OUT
            elif pos < len(body):
                piece = view[pos : pos + _FEED]
                pos += len(piece)
            else:
                return None  # truncated
            try:
                part = inflater.decompress(piece, _OUT)
            except zlib.error:
                return None
            tail = inflater.unconsumed_tail
            if len(out) + len(part) > limit:
                return BadRequest("The request body is too large.", "body_too_large", status=413)
            out += part
            yield
        pos -= len(inflater.unused_data)  # the bytes after this stream
        if gzip_member:
            pos = _ZEROS.match(body, pos).end()  # type: ignore[union-attr]
        if pos == len(body):
            return bytes(out)
        if not (gzip_member and body[pos : pos + 2] == _GZIP_MAGIC):
            return None  # trailing garbage
