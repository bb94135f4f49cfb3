"""The public port: the allowlist, the hold, and a streaming pass-through to vLLM.

Served by vllm_sleep.h1, the gateway's HTTP layer, with the same bounds (docs/security.md): a
request head must arrive within `header_timeout`, a body may not stall for `body_timeout`
(408), bodies are bounded one by one and in total, unknown transfer codings are refused, and
the head limit is the gateway's plus what the gateway adds to a head it forwards
(http_common.HOP_ADDED_*), so whatever the gateway forwards the agent accepts. Every refusal
is in OpenAI's error shape and logged as the client's error, not the agent's.

A request reaches the handler only once its body is complete, so an inference request is
counted in flight only from then: a client that sends a head and then nothing holds no slot
and cannot keep the model awake. Bodies are never parsed: the agent does not need the model
name or the `stream` flag, only the route. The request goes to vLLM over h1's upstream pool
with the client's header bytes as they came (hop-by-hop ones dropped), and vLLM's answer is
spliced into the client's connection from the upstream's protocol callbacks, the gateway's
data path: no coroutine switch per chunk, one write per upstream read, vLLM paused while the
client's socket buffer is full. An inference request holds its in-flight slot until vLLM's
last byte was read or the client went away, so `inflight` counts exactly what the engine is
working on. A client that leaves cancels its handler (h1), which closes the upstream request
(vLLM aborts it; the abandon is noted for the sleep's settle pause; not once vLLM's answer was
whole) or drops a held request at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from ..api.openai_errors import AGENT_REFUSALS, ErrorCode
from ..api.routes import Match, RouteKind, match
from ..h1 import ConnectError, Limits, Reply, Request, Response, Server, UpstreamError, UpstreamPool
from ..h1.wire import RawHeaders
from ..http_common import (
    HOP_ADDED_BYTES,
    HOP_ADDED_HEADERS,
    HOP_BY_HOP,
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    forwarded_header_block,
    response_header_fields,
)
from .clock import SYSTEM, Clock
from .config import AgentConfig
from .gate import Admission, Gate
from .metrics import AgentMetrics
from .openai_errors import error_body
from .state import StateBoard

log = logging.getLogger(__name__)

_HOP = frozenset(h.encode() for h in HOP_BY_HOP)
# Host is the upstream's; Content-Length is recomputed for the body actually sent; the h1
# server answered Expect: 100-continue. Content-Encoding stays: the body is passed as it came.
_DROP_REQUEST = _HOP | {b"host", b"content-length", b"expect"}
# Framing is the client connection's own (h1.Reply sets Content-Length or chunked).
_DROP_RESPONSE = _HOP | {b"content-length"}
# Every answer of vLLM is spliced into the client's connection as it arrives: the agent
# inspects none (the gateway reads the agent's own refusals, which the agent makes itself).
_SPLICE_ALL: frozenset[int] = frozenset()


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
        pool: UpstreamPool,
        on_upstream_down: Callable[[], None],
        *,
        clock: Clock = SYSTEM,
    ) -> None:
        self._config = config
        self._clock = clock
        self._gate, self._board, self._metrics = gate, board, metrics
        self._pool = pool
        upstream = urlsplit(config.upstream)
        self._upstream = (upstream.hostname or "", upstream.port or 80)
        self._host = upstream.netloc.encode()
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
            max_head=MAX_HEAD_BYTES + HOP_ADDED_BYTES,
            max_headers=MAX_HEADERS + HOP_ADDED_HEADERS,
            header_timeout=cfg.header_timeout or None,
            body_timeout=cfg.body_timeout or None,
            max_buffered=cfg.max_buffered_bytes,
        )
        return Server(
            self.handle,
            limits,
            on_reject=self.rejected,
            make_error=server_error,
            on_head=self.head_check,
        )

    def head_check(self, request: Request) -> Response | None:
        """A request the table refuses is answered from its head (the h1 server asks before
        reading a body): nothing invites, reads or buffers the body of a request that can
        only be refused. None: read on."""
        path = unquote(request.path, errors="replace")
        return self._refusal(request.method, path, match(request.method, path))

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
        refusal = self._refusal(request.method, path, m)
        if refusal is not None:
            return refusal
        assert m.route is not None
        if m.route.kind is RouteKind.PASSTHROUGH:
            self._passthrough.inc()
            return await self._forward(request, reply, m.target, inference=False)
        self._inference.inc()
        gate = self._gate
        if not gate.try_admit():  # not awake: held (or refused), and the hold is observed
            started = self._clock.monotonic()
            # A client that leaves while held cancels this wait: the gate drops it at once (a
            # held request is demand, and must stop counting as soon as nobody wants the answer).
            admission = await gate.acquire(self._config.hold_timeout)
            self._metrics.hold_seconds.labels(admission.value).observe(
                self._clock.monotonic() - started
            )
            if admission is not Admission.ADMITTED:
                return self._reject(admission)
        try:
            return await self._forward(request, reply, m.target, inference=True)
        finally:
            gate.release()

    def _refusal(self, method: str, path: str, m: Match) -> Response | None:
        """404 for a path outside the table, 405 for a method it does not take, else None."""
        if m.route is None:
            self._denied.inc()
            return error_response(404, f"{path[:200]} is not served on this port")
        if not m.allowed:
            self._denied.inc()
            allow = ", ".join(sorted(m.route.methods))
            return error_response(
                405, f"{method} not allowed on {m.route.path}", headers={"Allow": allow}
            )
        return None

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
        """Send the request to vLLM and splice its answer into `reply` from the upstream
        connection's callbacks (h1), as the gateway does: one write per upstream read, vLLM
        paused while the client's socket buffer is full (a slow client never makes the agent
        buffer). Returns once vLLM's last byte was relayed, or the response to send instead."""
        if request.query:
            target += "?" + request.query  # the table's path, never the client's
        body = request.body
        length = b"content-length: %d\r\n" % len(body) if body or request.method == "POST" else b""
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\n%s%s\r\n" % (
            request.method.encode(),
            target.encode("latin-1"),
            self._host,
            length,
            forwarded_header_block(request.headers, request.peer, _DROP_REQUEST),
        )
        host, port = self._upstream
        try:
            try:
                exchange = await self._pool.request(
                    host,
                    port,
                    head,
                    body,
                    sink=reply,
                    header_filter=_response_headers,
                    buffered=_SPLICE_ALL,
                    # Back once vLLM's answer was relayed (or broke off): one wake-up of this
                    # handler per request, not one at the head and one at the end.
                    whole=True,
                )
            except ConnectError as e:
                self._metrics.upstream_errors.inc()
                self._on_upstream_down()
                return error_response(
                    503,
                    f"vLLM is not reachable: {e}",
                    code=ErrorCode.ENGINE_UNREACHABLE,
                    headers={"Retry-After": str(self._config.retry_after)},
                )
            except UpstreamError as e:
                self._metrics.upstream_errors.inc()
                return error_response(502, f"vLLM failed mid-request: {e}")
            try:
                if not exchange.complete:  # else finished() would return at once
                    await exchange.finished()
            except UpstreamError as e:
                # vLLM broke off mid-body: the status line is out, so an incomplete response
                # is the only honest signal left.
                self._metrics.upstream_errors.inc()
                log.warning("relay of %s broke off: %s", target, e)
                reply.abort()
            finally:
                exchange.release()  # back to the pool when complete, else closed
        except asyncio.CancelledError:
            # The client left before vLLM's last byte: before its head too (a non-streamed
            # answer comes whole, at the end). The closed connection makes vLLM abort the
            # request a moment later; a sleep must wait for that (<=0.16 crashes on work
            # still running). Not when the answer was whole: the client's leaving can be
            # seen in the loop turn that relayed vLLM's last byte, and cancel this handler
            # before it resumes, but vLLM has nothing left to abort.
            if inference and (not reply.done or reply.aborted):
                self._gate.note_abandoned()
            raise
        return None


def _response_headers(headers: RawHeaders) -> RawHeaders:
    return response_header_fields(headers, _DROP_RESPONSE)
