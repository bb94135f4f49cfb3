"""A small HTTP/1.1 server and upstream client on asyncio protocols and llhttp (httptools).

Why not aiohttp here: the gateway is a proxy on every request's path, and aiohttp's general
machinery (request objects, a task and several awaits per streamed chunk, one syscall per
header block and chunk) cost ~4x nginx's CPU per proxied request (docs/benchmarks.md). This
package does only what a proxy needs: parse with llhttp, write with as few syscalls as the
data allows, and splice an upstream body into the client's connection from protocol callbacks,
so a streamed chunk costs no coroutine switch. Parsing, framing and chunked encoding are
llhttp's; what is here is connection state and flow control.
"""

from .client import ConnectError, Exchange, UpstreamError, UpstreamPool, UpstreamTimeout
from .server import Budget, Handler, HeadCheck, Limits, Reply, Request, Server
from .wire import Response

__all__ = [
    "Budget",
    "ConnectError",
    "Exchange",
    "Handler",
    "HeadCheck",
    "Limits",
    "Reply",
    "Request",
    "Response",
    "Server",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamTimeout",
]
