from __future__ import annotations

import pytest

from vllm_sleep.agent.routes import ROUTES, RouteKind, match


@pytest.mark.parametrize(
    "path",
    ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"],
)
def test_inference_routes(path: str) -> None:
    m = match("POST", path)
    assert m.allowed and m.route is not None and m.route.kind is RouteKind.INFERENCE


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/models"),
        ("GET", "/health"),
        ("GET", "/metrics"),
        ("GET", "/version"),
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
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
