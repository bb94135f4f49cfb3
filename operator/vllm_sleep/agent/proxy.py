"""The public port: the allowlist, the hold, and a streaming pass-through to vLLM.

Served by vllm_sleep.h1, the gateway's HTTP layer, with the same bounds (docs/security.md): a
request head must arrive within `header_timeout`, a body may not stall for `body_timeout`
(408), bodies are bounded one by one and in total, unknown transfer codings are refused, and
the head limit is the gateway's (http_common.MAX_HEAD_BYTES), so whatever the gateway
forwards the agent accepts. Every refusal is in OpenAI's error shape and logged as the
client's error, not the agent's.

A request reaches the handler only once its body is complete, so an inference request is
counted in flight only from then: a client that sends a head and then nothing holds no slot
and cannot keep the model awake. Bodies are never parsed: the agent does not need the model
name or the `stream` flag, only the route. Responses are relayed as they arrive (small ones
with a known length in one write); an inference request holds its in-flight slot until vLLM's
last byte was read or the client went away, so `inflight` counts exactly what the engine is
working on. A client that leaves cancels its handler (h1), which closes the upstream request
(vLLM aborts it) or drops a held request at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from urllib.parse import unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from ..api.openai_errors import AGENT_REFUSALS, ErrorCode
from ..api.routes import RouteKind, match
from ..h1 import Limits, Reply, Request, Response, Server
from ..http_common import HOP_BY_HOP, MAX_HEAD_BYTES, MAX_HEADERS, SMALL_BODY
from .clock import SYSTEM, Clock
from .config import AgentConfig
from .gate import Admission, Gate, Mode
from .metrics import AgentMetrics
from .openai_errors import error_body
from .state import StateBoard

log = logging.getLogger(__name__)

# Host is the upstream's; Content-Length is recomputed for the body actually sent; the h1
# server answered Expect: 100-continue.
_DROP_REQUEST = frozenset(h.encode() for h in HOP_BY_HOP | {"host", "content-length", "expect"})
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
_XFF = b"x-forwarded-for"


def error_response(
    status: int, message: str, *, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(error_body(status, message, code=code)).encode()
    return Response(status, body, tuple((headers or {}).items()))


def server_error(status: int, message: str) -> Response:
    """The h1 server's own refusals (malformed, too large, too slow) in OpenAI's shape."""
    headers = {"Retry-After": "1"} if status == 503 else None
    return error_response(status, message, headers=headers)


class PublicProxy:
    def __init__(
        self,
        config: AgentConfig,
        gate: Gate,
        board: StateBoard,
        metrics: AgentMetrics,
        session: aiohttp.ClientSession,
        on_upstream_down: Callable[[], None],
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        self._config = config
        self._clock = clock
        self._gate, self._board, self._metrics = gate, board, metrics
        self._session = session
        self._on_upstream_down = on_upstream_down
        # Bound once: a labels() lookup per request is measurable in the proxy benchmark.
        self._denied = metrics.requests.labels("denied")
        self._passthrough = metrics.requests.labels("passthrough")
        self._inference = metrics.requests.labels("inference")

    def server(self) -> Server:
        """The public port's HTTP server (bind it with `start`)."""
        cfg = self._config
        limits = Limits(
            max_body=cfg.max_body_bytes,
            max_head=MAX_HEAD_BYTES,
            max_headers=MAX_HEADERS,
            header_timeout=cfg.header_timeout or None,
            body_timeout=cfg.body_timeout or None,
            max_buffered=cfg.max_buffered_bytes,
        )
        return Server(self.handle, limits, on_reject=self.rejected, make_error=server_error)

    def rejected(self, path: str, status: int) -> None:
        """A request the HTTP layer refused (malformed, too large, too slow): the client's
        error, logged as such."""
        log.info("public request for %s refused: %d", path[:200] or "-", status)

    async def handle(self, request: Request, reply: Reply) -> None:
        try:
            resp = await self._handle(request, reply)
        except asyncio.CancelledError:
            raise  # the client left (h1 cancels its handler): nothing to answer, nothing to log
        except Exception:  # the agent answers, whatever happened; it never takes the pod down
            log.exception("public %s %s failed", request.method, request.path[:200])
            if reply.started:
                reply.abort()
                return
            resp = error_response(500, "internal error in the pod agent")
        if resp is not None:
            reply.send(resp)
        if self._config.access_log:
            log.info(
                '%s "%s %s" %s', request.peer, request.method, request.path[:200], reply.status
            )

    async def _handle(self, request: Request, reply: Reply) -> Response | None:
        # Percent-decoded, nothing more (no dot-segment folding): `/v1/../sleep` or
        # `/%2e%2e/sleep` is not in the table, so it is 404. Matching fails closed, and the
        # table's own path is what is forwarded.
        path = unquote(request.path, errors="replace")
        m = match(request.method, path)
        if m.route is None:
            self._denied.inc()
            return error_response(404, f"{path[:200]} is not served on this port")
        if not m.allowed:
            self._denied.inc()
            allow = ", ".join(sorted(m.route.methods))
            return error_response(
                405, f"{request.method} not allowed on {m.route.path}", headers={"Allow": allow}
            )
        if m.route.kind is RouteKind.PASSTHROUGH:
            self._passthrough.inc()
            return await self._forward(request, reply, m.target, inference=False)
        self._inference.inc()
        held = self._gate.mode is not Mode.OPEN
        started = self._clock.monotonic()
        # A client that leaves while held cancels this wait: the gate drops it at once (a held
        # request is demand, and must stop counting as soon as nobody wants the answer).
        admission = await self._gate.acquire(self._config.hold_timeout)
        if held:
            self._metrics.hold_seconds.labels(admission.value).observe(
                self._clock.monotonic() - started
            )
        if admission is not Admission.ADMITTED:
            return self._reject(admission)
        try:
            return await self._forward(request, reply, m.target, inference=True)
        finally:
            self._gate.release()

    def _reject(self, admission: Admission) -> Response:
        self._metrics.rejected.labels(admission.value).inc()
        state = self._board.state.value
        messages = {
            Admission.TIMEOUT: (
                f"the model is not awake (state: {state}); it did not become ready within "
                f"{self._config.hold_timeout:g}s, retry later"
            ),
            Admission.FULL: "too many requests are waiting for the model to wake, retry later",
            Admission.REFUSED: f"the model's engine is unavailable (state: {state}), retry later",
        }
        return error_response(
            AGENT_REFUSALS[admission.value],  # 429 when the hold queue is full, else 503
            messages[admission],
            code=admission.value,
            headers={"Retry-After": str(self._config.retry_after)},
        )

    async def _forward(
        self, request: Request, reply: Reply, target: str, *, inference: bool
    ) -> Response | None:
        url = self._config.upstream + target  # the table's path, never the client's
        if request.query:
            url += "?" + request.query
        try:
            headers = _request_headers(request)
        except UnicodeDecodeError:
            return error_response(400, "request headers must be ASCII or UTF-8")
        try:
            async with self._session.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=request.body or None,
                allow_redirects=False,
            ) as upstream:
                await self._relay(reply, upstream, inference=inference)
                return None
        except (TimeoutError, aiohttp.ClientConnectorError) as e:
            self._metrics.upstream_errors.inc()
            self._on_upstream_down()
            return error_response(
                503,
                f"vLLM is not reachable: {type(e).__name__}",
                code=ErrorCode.ENGINE_UNREACHABLE,
                headers={"Retry-After": str(self._config.retry_after)},
            )
        except aiohttp.ClientError as e:
            self._metrics.upstream_errors.inc()
            if reply.started:
                # vLLM broke off mid-body: the status line is out, so an incomplete response
                # is the only honest signal left.
                log.warning("relay of %s broke off: %s: %s", target, type(e).__name__, e)
                reply.abort()
                return None
            return error_response(502, f"vLLM failed mid-request: {type(e).__name__}: {e}")

    async def _relay(
        self, reply: Reply, upstream: aiohttp.ClientResponse, *, inference: bool
    ) -> None:
        """Copy vLLM's answer into the client's connection as it arrives, pausing vLLM while
        the client's socket buffer is full (a slow client never makes the agent buffer)."""
        headers = [
            (name, value)
            for name, value in upstream.raw_headers
            if name.decode("latin-1").lower() not in _DROP_RESPONSE
        ]
        length = upstream.content_length
        reason = upstream.reason.encode("latin-1") if upstream.reason else None
        try:
            if (
                length is not None
                and length <= SMALL_BODY
                and upstream.content_type != "text/event-stream"
            ):
                body = await upstream.read()
                reply.start(upstream.status, reason, headers, len(body))
                reply.write(body)
                reply.end()
                return
            reply.start(upstream.status, reason, headers, length)
            reply.flush_head()
            writable = asyncio.Event()
            writable.set()
            reply.on_flow(writable.clear, writable.set)
            try:
                async for chunk in upstream.content.iter_any():
                    reply.write(chunk)
                    if not writable.is_set():
                        await writable.wait()
            finally:
                reply.clear_flow()
            reply.end()
        except asyncio.CancelledError:
            # The client left mid-answer. vLLM aborts the request once the upstream connection
            # closes (leaving `async with`); a sleep must wait for that to land (<=0.16
            # crashes on work still running).
            if inference:
                self._gate.note_abandoned()
            raise


def _request_headers(request: Request) -> CIMultiDict[str]:
    """The client's headers as vLLM gets them: hop-by-hop ones (and those the client named in
    `Connection`) dropped, `X-Forwarded-For` extended with the client's address."""
    hop_only: set[bytes] = set()
    for name, value in request.headers:
        if name.lower() == b"connection":
            hop_only.update(t.strip().lower() for t in value.split(b","))
    out: CIMultiDict[str] = CIMultiDict()
    prior: list[str] = []
    for name, value in request.headers:
        low = name.lower()
        if low == _XFF:
            prior.append(_text(value))
        elif low not in _DROP_REQUEST and low not in hop_only:
            out.add(_text(name), _text(value))
    chain = [*prior, request.peer] if request.peer else prior
    if chain:
        out["X-Forwarded-For"] = ", ".join(chain)
    return out


def _text(raw: bytes) -> str:
    # The upstream client writes header text as UTF-8: UTF-8 in, the same bytes out.
    return raw.decode("utf-8")
