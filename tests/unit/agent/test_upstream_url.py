"""--upstream names vLLM on the pod's loopback over plain HTTP: the data path speaks no TLS."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vllm_sleep.agent import AgentConfig


@pytest.mark.parametrize("url", ["https://127.0.0.1:8001", "ftp://127.0.0.1", "127.0.0.1:8001"])
def test_an_upstream_that_is_not_plain_http_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="http:// URL"):
        AgentConfig(upstream=url, control_token="t")


def test_a_plain_http_upstream_is_taken() -> None:
    assert AgentConfig(upstream="http://127.0.0.1:8001/", control_token="t").upstream == (
        "http://127.0.0.1:8001"
    )
