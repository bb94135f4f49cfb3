"""Pure input parsing: request bodies, Pods and ModelDeployments."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.model_spec import WakeSpec
from vllm_sleep.api.names import CONDITION_AWAKE, LABEL_MODEL
from vllm_sleep.gateway.inbound import _MISSING, BadRequest, check_model, parse_model
from vllm_sleep.gateway.kube_parse import model_key, model_spec, pod_state
from vllm_sleep.gateway.routing import ModelKey, WakePolicy


def test_model_is_read_from_a_json_object() -> None:
    assert parse_model(b'{"model": "llama", "messages": []}') == "llama"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_body"),
        (b"{", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[1, 2]", "invalid_body"),
        (b'{"messages": []}', "missing_model"),
        (b'{"model": 3}', "invalid_model"),
        (b'{"model": ""}', "invalid_model"),
        (b"[" * 100_000, "invalid_json"),
    ],
)
def test_bad_bodies_are_named(body: bytes, code: str) -> None:
    result = parse_model(body)
    assert isinstance(result, BadRequest) and result.code == code


@given(st.binary(max_size=300))
def test_parse_model_never_raises(body: bytes) -> None:
    parse_model(body)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
    )
)
def test_parse_model_never_raises_on_any_json(doc: Any) -> None:
    parse_model(json.dumps(doc).encode())


def _as_json_loads_reads_it(body: bytes) -> str | BadRequest:
    """parse_model's rule, on json.loads itself: what its fast path must agree with."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return BadRequest("The request body is not valid JSON.", "invalid_json")
    if not isinstance(doc, dict):
        return BadRequest("The request body must be a JSON object.", "invalid_body")
    return check_model(doc.get("model", _MISSING))


@given(
    st.text(max_size=20),
    st.sampled_from(["utf-8", "utf-16", "utf-16-le", "utf-32", "utf-8-sig"]),
    st.binary(max_size=6) | st.sampled_from([b" \r\n\t", b" x", b"{}", b"\x00", b"\xff"]),
    st.booleans(),
)
def test_parse_model_reads_a_body_as_json_loads_does(
    model: str, encoding: str, tail: bytes, cut: bool
) -> None:
    """Any encoding json.loads detects, whitespace or garbage after the object, a truncated
    body: the same model or the same refusal."""
    body = json.dumps({"model": model, "n": [1.5, None]}).encode(encoding) + tail
    if cut:
        body = body[: len(body) // 2]
    assert parse_model(body) == _as_json_loads_reads_it(body)


def make_pod(**over: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": "m-0", "namespace": "ns", "labels": {LABEL_MODEL: "m"}},
        "status": {
            "phase": "Running",
            "podIP": "127.0.9.3",
            "conditions": [
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
                {"type": CONDITION_AWAKE, "status": "True"},
            ],
        },
    }
    for k, v in over.items():
        section, field = k.split("__")
        pod[section][field] = v
    return pod


def test_an_awake_ready_pod_is_routable_on_the_agent_port() -> None:
    p = pod_state(make_pod(), 8000)
    assert p is not None and p.awake and p.url == "http://127.0.9.3:8000" and p.model == "m"


@pytest.mark.parametrize(
    "over",
    [
        {"metadata__deletionTimestamp": "2026-01-01T00:00:00Z"},
        {"status__podIP": ""},
        {"status__phase": "Pending"},
        {"status__conditions": [{"type": "Ready", "status": "True"}]},
        {
            "status__conditions": [
                {"type": CONDITION_AWAKE, "status": "True"},
                {"type": "Ready", "status": "False"},
            ]
        },
        {
            "status__conditions": [
                {"type": CONDITION_AWAKE, "status": "False"},
                {"type": "Ready", "status": "True"},
            ]
        },
        {
            "status__conditions": [
                {"type": CONDITION_AWAKE, "status": "True"},
                {"type": "ContainersReady", "status": "False"},
                {"type": "Ready", "status": "False"},
            ]
        },
        {
            "status__conditions": [
                {"type": CONDITION_AWAKE, "status": "False"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": "True"},
            ]
        },
    ],
)
def test_pods_that_must_not_take_requests(over: dict[str, Any]) -> None:
    p = pod_state(make_pod(**over), 8000)
    assert p is not None and not p.awake


def test_routable_once_marked_awake_before_the_kubelet_folds_the_gate_into_ready() -> None:
    lagging = make_pod(
        status__conditions=[
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "False"},  # readiness gate not re-evaluated yet
            {"type": CONDITION_AWAKE, "status": "True"},
        ]
    )
    p = pod_state(lagging, 8000)
    assert p is not None and p.awake


def test_unlabelled_pod_is_ignored() -> None:
    assert pod_state(make_pod(metadata__labels={}), 8000) is None


def mdep(spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    """A ModelDeployment as the apiserver returns it (only the required fields set)."""
    body: dict[str, Any] = {"image": "vllm/vllm-openai:v0.11.0", "model": "org/m"}
    body["resources"] = {"gpuMemoryUtilization": 0.5, "weightsSize": "1Gi"}
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", **meta},
        "spec": {**body, **(spec or {})},
    }


def test_model_spec_takes_the_apis_defaults_and_fields() -> None:
    obj = mdep(uid="u1", creationTimestamp="2026-01-01T00:00:00Z")
    spec = model_spec(obj)
    assert spec is not None
    api_wake = WakeSpec()
    assert (spec.key, spec.served_name, spec.uid) == (ModelKey("ns", "m"), "m", "u1")
    assert spec.wake == WakePolicy(
        api_wake.on_request, api_wake.timeout.total_seconds(), api_wake.max_queued
    )
    assert spec.wake == WakePolicy()  # the router's defaults are the API's
    assert spec.created > 0 and spec.phase == "Pending"
    obj = mdep(
        {"servedModelName": "llama", "wake": {"onRequest": False, "timeout": "30s", "maxQueued": 4}}
    )
    obj["status"] = {"phase": "Asleep"}
    spec = model_spec(obj)
    assert spec is not None
    assert (spec.served_name, spec.phase) == ("llama", "Asleep")
    assert spec.wake == WakePolicy(on_request=False, timeout=30.0, max_queued=4)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (".5m", 30.0),
        ("1.s", 1.0),
        ("90000000000ns", 90.0),
        ("1500000\u00b5s", 1.5),
        ("2m0.5s", 120.5),
    ],
)
def test_wake_timeout_is_read_with_the_operators_duration_grammar(
    text: str, seconds: float
) -> None:
    spec = model_spec(mdep({"wake": {"timeout": text}}))
    assert spec is not None and spec.wake.timeout == seconds


@pytest.mark.parametrize(
    "wake",
    [
        {"onRequest": "maybe"},
        {"timeout": "soon"},
        {"timeout": "99999999999999h"},  # past Go's range: refused, never an overflow
        {"maxQueued": -1},
        {"surprise": 1},
    ],
)
def test_a_model_deployment_that_does_not_validate_is_skipped_and_logged(
    wake: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    assert model_spec(mdep({"wake": wake})) is None
    assert "ns/m skipped" in caplog.text


def test_an_object_without_a_name_is_no_model() -> None:
    assert model_spec({"metadata": {"namespace": "ns"}, "spec": {}}) is None
    assert model_key({"metadata": {"name": "m", "namespace": "ns"}}) == ModelKey("ns", "m")


def test_decode_body_handles_gzip_deflate_and_bombs() -> None:
    import asyncio
    import gzip
    import zlib

    from vllm_sleep.gateway.inbound import decode_body_async

    def decode_body(body: bytes, encoding: str, limit: int) -> bytes | BadRequest:
        return asyncio.run(decode_body_async(body, encoding, limit))

    raw = b'{"model": "m"}'
    assert decode_body(raw, "", 100) == raw
    assert decode_body(gzip.compress(raw), "gzip", 100) == raw
    assert decode_body(zlib.compress(raw), "deflate", 100) == raw
    raw_deflate = zlib.compressobj(wbits=-15)
    assert decode_body(raw_deflate.compress(raw) + raw_deflate.flush(), "deflate", 100) == raw
    bomb = decode_body(gzip.compress(b"0" * 1_000_000), "gzip", 1000)
    assert isinstance(bomb, BadRequest) and bomb.status == 413
    bad = decode_body(b"\x00junk", "gzip", 100)
    assert isinstance(bad, BadRequest) and bad.status == 400
    truncated = decode_body(gzip.compress(raw)[:10], "gzip", 100)
    assert isinstance(truncated, BadRequest) and truncated.status == 400
    br = decode_body(raw, "br", 100)
    assert isinstance(br, BadRequest) and br.status == 415


def test_an_asleep_loaded_pod_can_hold_at_its_agent() -> None:
    asleep = make_pod(
        status__conditions=[
            {"type": "ContainersReady", "status": "True"},
            {"type": "Ready", "status": "False"},
            {"type": CONDITION_AWAKE, "status": "False"},
        ]
    )
    p = pod_state(asleep, 8000)
    assert p is not None and p.can_hold and not p.awake and p.url == "http://127.0.9.3:8000"


@given(
    ip=st.sampled_from(["", "127.0.9.3"]),
    deleting=st.booleans(),
    phase=st.sampled_from(["Running", "Pending", "Failed"]),
    containers=st.sampled_from([None, "True", "False"]),
    ready=st.sampled_from([None, "True", "False"]),
    awake_cond=st.sampled_from([None, "True", "False", "Unknown"]),
)
def test_can_hold_is_exactly_a_loaded_live_pod_marked_not_awake(
    ip: str,
    deleting: bool,
    phase: str,
    containers: str | None,
    ready: str | None,
    awake_cond: str | None,
) -> None:
    conds = [
        {"type": t, "status": v}
        for t, v in (
            ("ContainersReady", containers),
            ("Ready", ready),
            (CONDITION_AWAKE, awake_cond),
        )
        if v is not None
    ]
    meta = {"name": "m-0", "namespace": "ns", "labels": {LABEL_MODEL: "m"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    obj = {"metadata": meta, "status": {"phase": phase, "podIP": ip, "conditions": conds}}
    p = pod_state(obj, 8000)
    assert p is not None
    loaded = (containers if containers is not None else ready) == "True"
    live = bool(ip) and not deleting and phase == "Running" and loaded
    assert p.can_hold == (live and awake_cond == "False")
    assert p.awake == (live and awake_cond == "True")
    assert not (p.awake and p.can_hold)  # never both: holders are only asked with none awake
