"""One OpenAI error shape for the agent and the gateway, and the refusals they agree on."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.agent.gate import Admission
from vllm_sleep.agent.openai_errors import error_response as agent_error
from vllm_sleep.api.openai_errors import (
    AGENT_REFUSALS,
    ErrorCode,
    ErrorType,
    error_body,
    error_code,
    error_type,
)
from vllm_sleep.gateway.errors import error_response as gateway_error


def test_every_agent_refusal_is_one_the_gateway_retries() -> None:
    refusals = {a.value for a in Admission if a is not Admission.ADMITTED}
    assert refusals <= set(AGENT_REFUSALS)
    assert ErrorCode.ENGINE_UNREACHABLE in AGENT_REFUSALS  # the agent's answer when vLLM is gone


def test_a_full_hold_queue_is_429_and_the_other_refusals_503() -> None:
    assert AGENT_REFUSALS[ErrorCode.QUEUE_FULL] == 429
    assert {s for c, s in AGENT_REFUSALS.items() if c != ErrorCode.QUEUE_FULL} == {503}


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (400, ErrorType.INVALID_REQUEST),
        (401, ErrorType.AUTHENTICATION),
        (403, ErrorType.PERMISSION),
        (404, ErrorType.NOT_FOUND),
        (405, ErrorType.INVALID_REQUEST),
        (413, ErrorType.INVALID_REQUEST),
        (429, ErrorType.RATE_LIMIT),
        (499, ErrorType.INVALID_REQUEST),
        (500, ErrorType.SERVER),
        (502, ErrorType.SERVER),
        (503, ErrorType.SERVER),
        (504, ErrorType.SERVER),
    ],
)
def test_types_are_openais(status: int, kind: ErrorType) -> None:
    assert error_type(status) is kind
    assert error_body(status, "m")["error"]["type"] == kind.value  # type: ignore[index]


@given(st.integers(400, 599), st.text(max_size=50), st.sampled_from([*ErrorCode, None]))
def test_the_body_is_always_the_openai_shape(
    status: int, message: str, code: ErrorCode | None
) -> None:
    raw = json.dumps(error_body(status, message, code)).encode()
    body = json.loads(raw)
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] == message
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert error_code(raw) == body["error"]["code"]


@pytest.mark.parametrize("raw", [b"", b"[]", b'{"error": "x"}', b'{"error": {"code": 503}}'])
def test_error_code_of_other_bodies_is_none(raw: bytes) -> None:
    assert error_code(raw) is None


@pytest.mark.parametrize("status", [404, 429, 503])
def test_agent_and_gateway_answer_the_same_body(status: int) -> None:
    agent = agent_error(status, "no", code=ErrorCode.QUEUE_FULL)
    gateway = gateway_error(status, "no", ErrorCode.QUEUE_FULL)
    assert agent.body is not None and isinstance(agent.body, bytes)
    assert json.loads(agent.body) == json.loads(gateway.body)
