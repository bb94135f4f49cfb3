"""What the two proxies (the pod agent and the gateway) share: header rules and limits. Both
serve clients with vllm_sleep.h1."""

from __future__ import annotations

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

# One bound on a request's head for both proxies, so a head the gateway forwards is never one
# the agent refuses: request line and headers together (and so any single field) at most
# MAX_HEAD_BYTES, at most MAX_HEADERS fields. Past it: 431 in OpenAI's error shape.
MAX_HEAD_BYTES: Final = 64 << 10
MAX_HEADERS: Final = 128

# Responses with a known length up to this (and not SSE) are relayed in one write.
SMALL_BODY = 1 << 20
