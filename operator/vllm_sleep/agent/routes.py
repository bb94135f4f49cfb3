"""The public port's allowlist: which (method, path) pairs reach vLLM, and how. Pure.

vLLM binds 127.0.0.1, so this table is the only way into it from outside the pod. Paths are
matched exactly on the percent-decoded path (dot segments are not folded, so a path holding one
matches nothing), and the request is forwarded to the *table's* path, never to the client's
spelling: `/v1/chat%2Fcompletions` or `/v1/../sleep` cannot smuggle anything past the table.
Everything else stays unreachable: vLLM's dev routes (`/sleep`, `/wake_up`, `/collective_rpc`,
...), its RL and elastic-EP routes, `/load`, and 0.34's `/checkpoint/*`, which is neither
dev-gated nor behind `--api-key` (docs/agent.md, "Public port").

Inference routes run on the GPU, so they are counted, and held while the engine is not awake.
Passthrough routes are answered by vLLM's frontend without touching the GPU (docs/vllm.md,
"Requests while asleep": `/health`, `/v1/models`, `/metrics`, `/tokenize` answer while asleep),
so they always go through.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class RouteKind(Enum):
    INFERENCE = "inference"
    PASSTHROUGH = "passthrough"


@dataclass(frozen=True)
class Route:
    path: str
    kind: RouteKind
    methods: frozenset[str]


def _routes(kind: RouteKind, methods: tuple[str, ...], *paths: str) -> dict[str, Route]:
    return {p: Route(p, kind, frozenset(methods)) for p in paths}


ROUTES: dict[str, Route] = {
    **_routes(
        RouteKind.INFERENCE,
        ("POST",),
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        # vLLM's other OpenAI-style GPU endpoints: same guard, so just as safe to expose.
        "/v1/rerank",
        "/v1/score",
        "/v1/audio/transcriptions",
        "/v1/audio/translations",
    ),
    **_routes(RouteKind.PASSTHROUGH, ("GET",), "/v1/models", "/health", "/metrics", "/version"),
    **_routes(RouteKind.PASSTHROUGH, ("POST",), "/tokenize", "/detokenize"),
}


@dataclass(frozen=True)
class Match:
    """The table's verdict: `route` is None for an unknown path; `allowed` is False when the
    path is known but the method is not (405 rather than 404, like vLLM itself)."""

    route: Route | None
    allowed: bool


def match(method: str, path: str) -> Match:
    route = ROUTES.get(path)
    if route is None:
        return Match(None, False)
    return Match(route, method in route.methods)
