from __future__ import annotations

import pytest

from vllm_sleep.api.routes import GATEWAY_ROUTES, ROUTES, ModelField, RouteKind, match

# vLLM's routes that run on the GPU (docs/agent.md, "Public port"; docs/vllm.md).
INFERENCE = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/inference/v1/generate",
    "/pooling",
    "/classify",
    "/score",
    "/v1/score",
    "/rerank",
    "/v1/rerank",
    "/v2/rerank",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
]


@pytest.mark.parametrize("path", INFERENCE)
def test_inference_routes(path: str) -> None:
    m = match("POST", path)
    assert m.allowed and m.route is not None and m.route.kind is RouteKind.INFERENCE
    assert m.target == path


# Per-pod utilities the gateway routes by model too, to a replica asleep or awake.
UTILITIES = ["/tokenize", "/detokenize", "/v1/messages/count_tokens"]


def test_the_gateway_routes_every_inference_route_by_the_model_it_names() -> None:
    assert sorted(GATEWAY_ROUTES) == sorted(INFERENCE + UTILITIES)
    forms = {p for p, r in GATEWAY_ROUTES.items() if r.model_field is ModelField.FORM}
    assert forms == {"/v1/audio/transcriptions", "/v1/audio/translations"}
    utilities = {p for p, r in GATEWAY_ROUTES.items() if r.kind is RouteKind.PASSTHROUGH}
    assert utilities == set(UTILITIES)
    assert all(GATEWAY_ROUTES[p].model_field is ModelField.JSON for p in UTILITIES)


@pytest.mark.parametrize(
    ("method", "path", "target"),
    [
        ("GET", "/v1/responses/resp_0123abcd", "/v1/responses/resp_0123abcd"),
        ("POST", "/v1/responses/resp_0123abcd/cancel", "/v1/responses/resp_0123abcd/cancel"),
    ],
)
def test_a_stored_response_by_id_passes_through_to_its_own_path(
    method: str, path: str, target: str
) -> None:
    m = match(method, path)
    assert m.allowed and m.route is not None and m.route.kind is RouteKind.PASSTHROUGH
    assert m.target == target
    assert not match("DELETE", path).allowed


@pytest.mark.parametrize(
    "path",
    [
        "/v1/responses/../sleep",
        "/v1/responses/..",
        "/v1/responses/a.b",
        "/v1/responses/a%2fb",
        "/v1/responses/a/b",
        "/v1/responses/",
        "/v1/responses/x/cancel/",
        "/v1/responses/x/../../sleep",
        "/v1/responses/" + "a" * 257,
    ],
)
def test_a_stored_response_id_is_one_plain_segment(path: str) -> None:
    assert match("GET", path).route is None
    assert match("POST", path).route is None


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/version"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("POST", "/v1/messages/count_tokens"),
    ],
)
def test_passthrough_routes(method: str, path: str) -> None:
    m = match(method, path)
    assert m.allowed and m.route is not None and m.route.kind is RouteKind.PASSTHROUGH


@pytest.mark.parametrize(
    "path",
    [
        "/sleep",
        "/wake_up",
        "/is_sleeping",
        "/collective_rpc",
        "/reset_prefix_cache",
        "/pause",
        "/resume",
        "/server_info",
        "/load",
        "/v1/chat/completions/",
        "/V1/completions",
        "/v1/../sleep",
        "",
        "/v1/models/m",
    ],
)
def test_everything_else_is_unknown(path: str) -> None:
    assert match("POST", path).route is None
    assert match("GET", path).route is None


def test_known_path_wrong_method() -> None:
    m = match("GET", "/v1/chat/completions")
    assert m.route is not None and not m.allowed
    assert not match("DELETE", "/health").allowed
    assert not match("HEAD", "/health").allowed  # kubelet probes GET; HEAD gains nothing


def test_no_dev_route_in_the_table() -> None:
    dev = {"/sleep", "/wake_up", "/is_sleeping", "/collective_rpc", "/pause", "/resume"}
    assert not dev & set(ROUTES)
    assert all(r.path == p for p, r in ROUTES.items())
