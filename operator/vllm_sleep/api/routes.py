"""The public surface: which (method, path) pairs of vLLM reach the engine, and how. Pure.

One table for the agent's public port (its allowlist) and the gateway (what it routes by
model). vLLM binds 127.0.0.1, so this table is the only way into it from outside the pod.
Paths are matched exactly on the percent-decoded path (dot segments are not folded, so a path
holding one matches nothing), and what is forwarded is the *table's* path, never the client's
spelling: `/v1/chat%2Fcompletions` or `/v1/../sleep` cannot smuggle anything past the table.
The one templated path, `/v1/responses/{id}`, takes one segment of `[A-Za-z0-9_-]` (vLLM's
ids are `resp_<hex>`), so no `/`, `.` or `%` reaches vLLM from it.

Everything else stays unreachable: vLLM's dev routes (`/sleep`, `/wake_up`,
`/collective_rpc`, ...), its RL and elastic-EP routes, `/load`, 0.34's `/checkpoint/*`,
`/invocations` (SageMaker's one entry to every task, which would have to be classified by
body), the LoRA load/unload routes, and the WebSocket `/v1/realtime` (docs/agent.md, "Public
port").

INFERENCE routes run on the GPU: the agent counts them in flight and holds them while the
engine is not awake; the gateway routes them by the model their body names (`model_field`).
PASSTHROUGH routes are answered by vLLM's frontend without touching the GPU (docs/vllm.md,
"Requests while asleep"), so the agent always lets them through. The gateway routes the ones
with a `model_field` too (the tokenizer's and `count_tokens`), by the model named, to any
replica whose agent is up, asleep or not, never holding them or asking for a wake; the rest
name no model and are not routed (docs/gateway.md, "Routes").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class RouteKind(Enum):
    INFERENCE = "inference"
    PASSTHROUGH = "passthrough"


class ModelField(Enum):
    """Where a request names its model (how the gateway routes it)."""

    JSON = "json"  # the top-level `model` of a JSON object
    FORM = "form"  # the `model` field of a multipart/form-data body (audio uploads)


@dataclass(frozen=True)
class Route:
    path: str
    kind: RouteKind
    methods: frozenset[str]
    model_field: ModelField | None = None  # set: the gateway routes it by this model


def _routes(
    kind: RouteKind, methods: tuple[str, ...], field: ModelField | None, *paths: str
) -> dict[str, Route]:
    return {p: Route(p, kind, frozenset(methods), field) for p in paths}


_INFERENCE, _PASSTHROUGH = RouteKind.INFERENCE, RouteKind.PASSTHROUGH

ROUTES: dict[str, Route] = {
    **_routes(
        _INFERENCE,
        ("POST",),
        ModelField.JSON,
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/messages",  # Anthropic's Messages API
        "/inference/v1/generate",  # token ids in, token ids out
        # Pooling models (embedding, classification, reward, cross-encoders).
        "/pooling",
        "/classify",
        "/score",
        "/v1/score",
        "/rerank",
        "/v1/rerank",
        "/v2/rerank",
    ),
    **_routes(
        _INFERENCE,
        ("POST",),
        ModelField.FORM,
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ),
    **_routes(_PASSTHROUGH, ("GET",), None, "/v1/models", "/health", "/metrics", "/version"),
    # Per-pod utilities: the engine's tokenizer, answered asleep or awake.
    **_routes(
        _PASSTHROUGH,
        ("POST",),
        ModelField.JSON,
        "/tokenize",
        "/detokenize",
        "/v1/messages/count_tokens",
    ),
}

# A stored response, by id: read it (GET, `?stream=true` replays its events) or cancel a
# background one. Answered from the frontend's store; the GPU work is the creating request's.
RESPONSE_ITEM = Route("/v1/responses/{id}", _PASSTHROUGH, frozenset({"GET"}))
RESPONSE_CANCEL = Route("/v1/responses/{id}/cancel", _PASSTHROUGH, frozenset({"POST"}))
_RESPONSE_ID = re.compile(r"/v1/responses/([A-Za-z0-9_-]{1,256})(/cancel)?")

# What the gateway routes by the model they name: inference routes (held, woken) and the
# per-pod utilities (never held, never a wake).
GATEWAY_ROUTES: dict[str, Route] = {p: r for p, r in ROUTES.items() if r.model_field}


@dataclass(frozen=True)
class Match:
    """The table's verdict: `route` is None for an unknown path; `allowed` is False when the
    path is known but the method is not (405 rather than 404, like vLLM itself). `target` is
    the path to forward: the table's own (a stored response's: its checked id in it)."""

    route: Route | None
    allowed: bool
    target: str = ""


# The verdicts for the table's own paths, built once: the agent asks on every request.
_ALLOWED: dict[tuple[str, str], Match] = {
    (m, p): Match(r, True, r.path) for p, r in ROUTES.items() for m in r.methods
}
_NO_ROUTE = Match(None, False)


def match(method: str, path: str) -> Match:
    found = _ALLOWED.get((method, path))
    if found is not None:
        return found
    route = ROUTES.get(path)
    if route is None:
        item = _RESPONSE_ID.fullmatch(path)
        if item is None:
            return _NO_ROUTE
        route = RESPONSE_CANCEL if item.group(2) else RESPONSE_ITEM
        target = f"/v1/responses/{item.group(1)}{item.group(2) or ''}"
        return Match(route, method in route.methods, target)
    return Match(route, method in route.methods, route.path)


def is_stored_response(path: str) -> bool:
    """A path about one stored response (`GET /v1/responses/{id}`, `.../cancel`)."""
    return _RESPONSE_ID.fullmatch(path) is not None
