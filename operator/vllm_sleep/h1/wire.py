"""Bytes on the wire: status lines, header blocks, the Date header, a complete response."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}
RawHeaders = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class Response:
    """A complete answer the server makes itself (errors, /v1/models, /metrics)."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str | None = "application/json"


# (status, message) -> the answer the server sends for requests it refuses itself.
ErrorFactory = Callable[[int, str], Response]


def plain_error(status: int, message: str) -> Response:
    return Response(status, json.dumps({"error": {"message": message, "code": status}}).encode())


class DateHeader:
    """`Date:` formatted at most once a second (every response carries one, RFC 9110 §6.6.1)."""

    def __init__(self) -> None:
        self._second = -1
        self._line = b""

    def line(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._line = b"date: " + formatdate(now, usegmt=True).encode() + b"\r\n"
        return self._line


def status_line(status: int, reason: bytes | None = None) -> bytes:
    return b"HTTP/1.1 %d %s\r\n" % (status, reason or REASONS.get(status, b"Unknown"))


def header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    """Our own headers (names and values we chose; never client-controlled line breaks)."""
    out = bytearray()
    for name, value in headers:
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} has a line break")
        out += f"{name}: {value}\r\n".encode("latin-1")
    return bytes(out)


def raw_header_lines(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Headers as llhttp parsed them: it rejects line breaks in names and values."""
    return b"".join([b"%s: %s\r\n" % pair for pair in headers])  # a list joins faster


def find_header(headers: RawHeaders, lower_name: bytes) -> bytes | None:
    size = len(lower_name)
    for name, value in headers:
        # Length first: most names differ in length, and lower() allocates (several lookups
        # per proxied request, so it shows in the gateway's profile).
        if len(name) == size and name.lower() == lower_name:
            return value
    return None
