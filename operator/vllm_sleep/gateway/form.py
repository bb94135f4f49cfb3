"""The `model` field of a multipart/form-data body: how the gateway routes an audio upload.

Parsed with python-multipart, the parser of Starlette and so of vLLM's own audio routes, so a
form vLLM would read the gateway reads the same way: the last non-file `model` field wins
(Starlette's form is a multi-dict read with `get`, the last value). The body is already whole
and bounded by `--max-body-bytes`; what parsing it may cost is bounded too: it is fed a slice
at a time with a yield to the event loop in between, file contents are skipped, not kept, and
the parts, a part's header bytes and the `model` value are counted against fixed limits.
"""

from __future__ import annotations

import asyncio

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from .inbound import MAX_MODEL_NAME, BadRequest, check_model

MAX_PARTS = 1000  # Starlette's max_fields / max_files default
MAX_PART_HEADERS = 16 << 10  # bytes of one part's header block
_SLICE = 32 << 10


class _Refused(Exception):
    def __init__(self, bad: BadRequest) -> None:
        self.bad = bad


class _Form:
    """Parser callbacks: keeps only the last `model` field's value."""

    def __init__(self) -> None:
        self.parts = 0
        self.model: bytes | None = None
        self._field = bytearray()
        self._value = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._value_buf: bytearray | None = None  # the `model` field being read

    # python-multipart's events this form listens to: `on_<event>` calls `self._<event>`.
    EVENTS = (
        "part_begin", "header_field", "header_value", "header_end", "headers_finished",
        "part_data", "part_end",
    )  # fmt: skip

    def callbacks(self) -> dict[str, object]:
        return {f"on_{event}": getattr(self, f"_{event}") for event in self.EVENTS}

    def _part_begin(self) -> None:
        self.parts += 1
        if self.parts > MAX_PARTS:
            raise _Refused(
                BadRequest(
                    f"The form has more than {MAX_PARTS} parts.", "body_too_complex", None, 413
                )
            )
        self._headers, self._header_bytes, self._value_buf = [], 0, None
        self._field.clear()
        self._value.clear()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > MAX_PART_HEADERS:
            raise _Refused(BadRequest("A form part's headers are too large.", "invalid_body"))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count(end - start)
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers.append((bytes(self._field).lower(), bytes(self._value)))
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        for name, value in self._headers:
            if name == b"content-disposition":
                _, params = parse_options_header(value)
                if params.get(b"name") == b"model" and b"filename" not in params:
                    self._value_buf = bytearray()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        buf = self._value_buf
        if buf is None:
            return  # an audio file or another field: not kept
        buf += data[start:end]
        if len(buf) > 4 * MAX_MODEL_NAME:  # UTF-8: at most 4 bytes a character
            raise _Refused(
                BadRequest("`model` must be a non-empty string.", "invalid_model", "model")
            )

    def _part_end(self) -> None:
        if self._value_buf is not None:
            self.model = bytes(self._value_buf)
            self._value_buf = None


async def read_form_model(body: bytes, content_type: str | None) -> str | BadRequest:
    """The `model` of a multipart/form-data body, or why the body is unusable."""
    ctype, params = parse_options_header(content_type or "")
    if ctype != b"multipart/form-data":
        return BadRequest(
            "This route takes a multipart/form-data body (the audio file and its fields).",
            "invalid_body",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        return BadRequest("The multipart Content-Type has no boundary.", "invalid_body")
    form = _Form()
    try:
        parser = MultipartParser(boundary, form.callbacks())  # type: ignore[arg-type]
        for start in range(0, len(body), _SLICE):
            parser.write(body[start : start + _SLICE])
            await asyncio.sleep(0)  # one slice at a time: other requests run in between
        parser.finalize()
    except _Refused as e:
        return e.bad
    except (MultipartParseError, ValueError):
        return BadRequest("The multipart body is malformed.", "invalid_body")
    if form.model is None:
        return check_model(None)
    try:
        return check_model(form.model.decode("utf-8"))
    except UnicodeDecodeError:
        return check_model(form.model)
