"""The public port: the allowlist, the hold, and a streaming pass-through to vLLM.

Bodies are streamed both ways and never parsed: the agent does not need the model name or the
`stream` flag, only the route. Small bodies with a known length are read whole (one write
instead of a chunk loop); everything else, and every SSE stream, goes through chunk by chunk as
it arrives. An inference request holds its in-flight slot until vLLM's last byte was read or the
client went away, so `inflight` counts exactly what the engine is working on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from ..api.openai_errors import AGENT_REFUSALS, ErrorCode
from ..http_common import HOP_BY_HOP, relay
from .clock import SYSTEM, Clock
from .config import AgentConfig
from .gate import Admission, Gate, Mode
from .metrics import AgentMetrics
from .openai_errors import error_response
from .routes import Route, RouteKind, match
from .state import StateBoard

log = logging.getLogger(__name__)

# Host is the upstream's; Content-Length is recomputed for the body actually sent; aiohttp's
# server already answered Expect: 100-continue.
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "expect"}
BUFFER_LIMIT = 1 << 20  # = aiohttp's default client_max_size for request.read()
_CHUNK = 1 << 16


DISCONNECT_POLL_SECONDS = 0.25  # how soon a held request notices its client left


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

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._handle(request)
        except Exception:  # the agent answers, whatever happened; it never takes the pod down
            log.exception("public %s %s failed", request.method, request.path)
            return error_response(500, "internal error in the pod agent")

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        m = match(request.method, request.path)
        if m.route is None:
            self._denied.inc()
            return error_response(404, f"{request.path[:200]} is not served on this port")
        if not m.allowed:
            self._denied.inc()
            allow = ", ".join(sorted(m.route.methods))
            return error_response(
                405, f"{request.method} not allowed on {m.route.path}", headers={"Allow": allow}
            )
        if m.route.kind is RouteKind.PASSTHROUGH:
            self._passthrough.inc()
            return await self._forward(request, m.route, inference=False)
        self._inference.inc()
        held = self._gate.mode is not Mode.OPEN
        started = self._clock.monotonic()
        if held:
            admission = await self._hold(request)
            if admission is None:
                return error_response(499, "client closed the request while it was held")
        else:
            admission = await self._gate.acquire(self._config.hold_timeout)
        if held:
            self._metrics.hold_seconds.labels(admission.value).observe(
                self._clock.monotonic() - started
            )
        if admission is not Admission.ADMITTED:
            return self._reject(admission)
        if held and (request.transport is None or request.transport.is_closing()):
            # The client gave up while held: running its request now would only keep the
            # engine busy (and awake) for nobody.
            self._gate.release()
            return error_response(499, "client closed the request while it was held")
        try:
            return await self._forward(request, m.route, inference=True)
        finally:
            self._gate.release()

    async def _hold(self, request: web.BaseRequest) -> Admission | None:
        """Wait for admission while held, giving up (None) if the client goes away meanwhile.

        A held request counts as demand (the operator wakes the engine for it), so a client that
        left must stop counting at once, not when the hold times out.
        """
        wait = asyncio.ensure_future(self._gate.acquire(self._config.hold_timeout))
        while True:
            done, _ = await asyncio.wait((wait,), timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return wait.result()
            if request.transport is None or request.transport.is_closing():
                wait.cancel()  # the gate drops the waiter (or releases a just-granted slot)
                with contextlib.suppress(asyncio.CancelledError):
                    await wait
                return None

    def _reject(self, admission: Admission) -> web.Response:
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
        self, request: web.BaseRequest, route: Route, *, inference: bool
    ) -> web.StreamResponse:
        url = self._config.upstream + route.path  # the table's path, never the client's
        if request.rel_url.raw_query_string:
            url += "?" + request.rel_url.raw_query_string
        headers = _request_headers(request)
        data: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= BUFFER_LIMIT:
                data = await request.read()
            else:
                data = request.content  # streamed upstream with chunked encoding
        try:
            async with self._session.request(
                request.method,
                URL(url, encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
            ) as upstream:
                return await self._relay(request, upstream, inference=inference)
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
            return error_response(502, f"vLLM failed mid-request: {type(e).__name__}: {e}")

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, *, inference: bool
    ) -> web.StreamResponse:
        def client_left() -> None:
            # vLLM aborts the request once the upstream connection closes; a sleep must wait
            # for that to land (<=0.16 crashes on work still running).
            if inference:
                self._gate.note_abandoned()

        return await relay(
            request,
            upstream,
            on_client_left=client_left,
            on_broken=lambda _e: self._metrics.upstream_errors.inc(),
        )


def _request_headers(request: web.BaseRequest) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        if name.lower() not in _DROP_REQUEST:
            out.add(name, value)
    peer = request.remote
    if peer:
        prior = request.headers.get("X-Forwarded-For")
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    return out
