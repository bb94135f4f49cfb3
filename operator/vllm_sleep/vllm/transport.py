"""How `VLLMClient` reaches vLLM: one request, one whole answer, failures as `VLLMError`s.

`H1Transport` is the production path: keep-alive HTTP/1.1 over `vllm_sleep.h1`'s upstream pool
(llhttp), a few microseconds of Python per call where a general client spends its time on
request and response objects, auth and redirect layers and URL parsing (the agent makes ~34
calls per pod start, and the sim-kubelet runs a thousand agents in one process). It speaks
plain http only: vLLM listens on the pod's loopback. `HttpxTransport` wraps a caller's
`httpx.AsyncClient` (tests inject an in-memory transport; any other scheme, TLS included,
goes that way).

Timeouts, the same on both: `connect_timeout` bounds opening a connection (a failure there is
`VLLMUnreachable`: nothing was sent); a call's `read_timeout` bounds the wait for each byte of
the answer (`VLLMTimeout`: the request was sent and vLLM may still be working on it).
"""

from __future__ import annotations

import json as jsonlib
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

import httpx

from ..h1 import ConnectError, UpstreamError, UpstreamPool, UpstreamTimeout
from .errors import VLLMTimeout, VLLMUnreachable

Params = list[tuple[str, str]]

# uvicorn (vLLM's server) closes a keep-alive connection idle for 5 s; a pooled one is dropped
# before that, so a request is not written into a socket the server is closing.
KEEPALIVE = 4.0
# No answer of vLLM the client reads comes near this (/metrics is tens of KiB).
MAX_ANSWER_BYTES = 64 << 20


class Answer:
    """A complete 2xx-or-not answer: status and body."""

    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not (empty included)."""
        return jsonlib.loads(self.body)


class Transport(Protocol):
    async def request(
        self,
        method: str,
        path: str,
        params: Params | None,
        json: Any,
        read_timeout: float,
    ) -> Answer: ...

    async def aclose(self) -> None: ...


class H1Transport:
    """Keep-alive HTTP/1.1 to one `http://host[:port][/prefix]` base URL."""

    def __init__(self, base_url: str, *, connect_timeout: float) -> None:
        parts = urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(
                f"vLLM base URL must be http://host[:port] (vLLM listens on the pod's "
                f"loopback; https needs an injected httpx client), got {base_url!r}"
            )
        if parts.query or parts.fragment or parts.username is not None:
            raise ValueError(f"vLLM base URL must not carry a query or credentials: {base_url!r}")
        self._addr = (parts.hostname, parts.port or 80)
        self._host = parts.netloc.encode("ascii")  # the Host header, as written (port included)
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self._pool = UpstreamPool(connect_timeout=connect_timeout, idle_timeout=KEEPALIVE)

    async def request(
        self,
        method: str,
        path: str,
        params: Params | None,
        json: Any,
        read_timeout: float,
    ) -> Answer:
        target = self._prefix + path.encode("ascii")
        if params:
            # Each pair as it is: a repeated key (tags) stays repeated, never comma-joined.
            target += b"?" + urlencode(params).encode("ascii")
        if json is not None:
            body = jsonlib.dumps(json).encode()
            framing = b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body)
        else:
            body = b""
            framing = b"content-length: 0\r\n" if method != "GET" else b""
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s\r\n" % (
            method.encode("ascii"),
            target,
            self._host,
            framing,
        )
        host, port = self._addr
        try:
            exchange = await self._pool.request(host, port, head, body, read_timeout=read_timeout)
            try:
                data, complete = await exchange.read(MAX_ANSWER_BYTES)
            finally:
                exchange.release()  # back to the pool when complete, else closed
        except ConnectError as e:
            raise VLLMUnreachable(path, f"ConnectError: {e}") from e
        except UpstreamTimeout as e:
            raise VLLMTimeout(path, "no answer within the timeout") from e
        except UpstreamError as e:
            raise VLLMUnreachable(path, f"{type(e).__name__}: {e}") from e
        if not complete:
            raise VLLMUnreachable(path, f"answer larger than {MAX_ANSWER_BYTES} bytes")
        return Answer(exchange.status, data)

    async def aclose(self) -> None:
        await self._pool.close()


class HttpxTransport:
    """A caller's httpx client (not closed here: the caller owns it)."""

    def __init__(self, http: httpx.AsyncClient, base_url: str, *, connect_timeout: float) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._connect = connect_timeout

    async def request(
        self,
        method: str,
        path: str,
        params: Params | None,
        json: Any,
        read_timeout: float,
    ) -> Answer:
        try:
            resp = await self._http.request(
                method,
                self._base + path,
                params=tuple(params or ()),  # tuples: repeated keys stay repeated
                json=json,
                timeout=httpx.Timeout(read_timeout, connect=self._connect),
            )
        except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as e:
            raise VLLMTimeout(path, f"no answer within the timeout ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise VLLMUnreachable(path, f"{type(e).__name__}: {e}") from e
        return Answer(resp.status_code, resp.content)

    async def aclose(self) -> None:
        pass
