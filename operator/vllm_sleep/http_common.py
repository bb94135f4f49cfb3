"""What the two proxies (the pod agent and the gateway) share: header rules and limits. Both
serve clients with vllm_sleep.h1."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

# RFC 9110 §7.6.1 hop-by-hop headers (plus the non-standard Proxy-Connection and Keep-Alive):
# they describe one connection and must not be forwarded to the next.
HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

# One bound on a client's request head for both proxies: request line and headers together
# (and so any single field) at most MAX_HEAD_BYTES, at most MAX_HEADERS fields. Past it: 431 in
# OpenAI's error shape.
MAX_HEAD_BYTES: Final = 64 << 10
MAX_HEADERS: Final = 128
# What a proxy adds to a head it forwards: its own Host and Content-Length (where the client
# may have sent neither), and X-Forwarded-For (a new field, or the client's longer by one
# address): at most 3 fields and ~160 bytes. The agent, the gateway's next hop, accepts this
# much more, so a head the gateway accepted is never one the agent refuses.
HOP_ADDED_BYTES: Final = 512
HOP_ADDED_HEADERS: Final = 3

# Responses with a known length up to this (and not SSE) are relayed in one write.
SMALL_BODY = 1 << 20

_XFF = b"x-forwarded-for"
_CHAINED = frozenset({_XFF, b"connection"})  # handled whatever `drop` says (below)


def forwarded_header_block(
    headers: Iterable[tuple[bytes, bytes]], peer: str | None, drop: frozenset[bytes]
) -> bytes:
    """The client's header lines as the next hop gets them, names and values byte for byte:
    the lower-case names in `drop` left out, and those the client named in `Connection`
    (RFC 9110 §7.6.1: for this hop only); `X-Forwarded-For` extended with the client's
    address."""
    # One pass, each kept line formatted as it is met: a Connection header that names other
    # fields is rare, so those are taken out afterwards, from the few lines kept.
    out: list[bytes] = []
    prior = None
    hop_only: set[bytes] | None = None
    for name, value in headers:
        low = name.lower()
        if low in _CHAINED:
            if low == _XFF:
                prior = value if prior is None else prior + b", " + value
            else:  # Connection
                if hop_only is None:
                    hop_only = set()
                hop_only.update(t.strip().lower() for t in value.split(b","))
        elif low not in drop:
            out.append(b"%s: %s\r\n" % (name, value))
    if hop_only:  # a field name holds no ":" (a token), so each line's name ends at its first
        out = [line for line in out if line[: line.index(b":")].lower() not in hop_only]
    if peer:
        chain = peer.encode() if prior is None else prior + b", " + peer.encode()
        out.append(b"x-forwarded-for: %s\r\n" % chain)
    elif prior is not None:
        out.append(b"x-forwarded-for: %s\r\n" % prior)
    return b"".join(out)


_CONNECTION = b"connection"


def response_header_fields(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes]
) -> list[tuple[bytes, bytes]]:
    """An upstream answer's header fields as the client gets them: the lower-case names in
    `drop` left out, and `Connection` with those the upstream named in it (RFC 9110 §7.6.1:
    they describe its connection to us, and a proxy must not pass them on)."""
    out = []
    named: set[bytes] | None = None
    for name, value in headers:
        low = name.lower()
        if low == _CONNECTION:
            named = (named or set()) | {t.strip().lower() for t in value.split(b",")}
        elif low not in drop:
            out.append((name, value))
    if named:
        out = [(n, v) for n, v in out if n.lower() not in named]
    return out
