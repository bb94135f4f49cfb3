"""What a replica sees of the request: the client's headers (gateway.proxy.forwarded_headers)
and the Host of the request head."""

from __future__ import annotations

import asyncio

from vllm_sleep.gateway.proxy import Retry, forwarded_headers, send
from vllm_sleep.h1 import ConnectError, Request


def request(*headers: tuple[bytes, bytes], peer: str | None = "127.0.0.9") -> Request:
    return Request("POST", "/v1/chat/completions", "", "1.1", list(headers), b"{}", peer, True)


def lines(block: bytes) -> list[bytes]:
    return [line for line in block.split(b"\r\n") if line]


def test_hop_by_hop_framing_and_host_are_dropped_and_the_peer_appended() -> None:
    block = forwarded_headers(
        request(
            (b"Host", b"gw"),
            (b"Content-Length", b"2"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Expect", b"100-continue"),
            (b"Content-Type", b"application/json"),
        ),
        strip_auth=False,
    )
    assert lines(block) == [b"Content-Type: application/json", b"x-forwarded-for: 127.0.0.9"]


def test_headers_named_in_connection_stay_on_the_client_hop() -> None:
    """RFC 9110 §7.6.1: a field the client named in Connection is not forwarded."""
    block = forwarded_headers(
        request(
            (b"Connection", b"keep-alive, X-Session-Secret ,x-trace"),
            (b"X-Session-Secret", b"s"),
            (b"X-Trace", b"t"),
            (b"X-Kept", b"k"),
        ),
        strip_auth=False,
    )
    assert lines(block) == [b"X-Kept: k", b"x-forwarded-for: 127.0.0.9"]


def test_forwarded_for_chain_is_extended_and_auth_stripped_when_the_gateway_checks_keys() -> None:
    block = forwarded_headers(
        request(
            (b"X-Forwarded-For", b"10.1.1.1"),
            (b"Authorization", b"Bearer gateway-key"),
            (b"X-Forwarded-For", b"10.2.2.2"),
        ),
        strip_auth=True,
    )
    assert lines(block) == [b"x-forwarded-for: 10.1.1.1, 10.2.2.2, 127.0.0.9"]
    kept = forwarded_headers(request((b"Authorization", b"Bearer k")), strip_auth=False)
    assert lines(kept)[0] == b"Authorization: Bearer k"


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
