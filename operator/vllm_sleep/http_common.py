"""HTTP facts shared by the two proxies (the pod agent and the gateway), defined once."""

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

# `code` values of the agent's own 503 answers. Each means the request never reached vLLM, so
# the gateway may send it elsewhere or hold it again (it is never run twice).
AGENT_REFUSAL_CODES: Final = frozenset(
    {"hold_timeout", "queue_full", "engine_unavailable", "engine_unreachable"}
)
