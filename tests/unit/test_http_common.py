"""The gateway's retry rule depends on the agent's refusal codes: they must stay in sync."""

from __future__ import annotations

from vllm_sleep.agent.gate import Admission
from vllm_sleep.http_common import AGENT_REFUSAL_CODES


def test_every_agent_refusal_is_one_the_gateway_retries() -> None:
    refusals = {a.value for a in Admission if a is not Admission.ADMITTED}
    assert refusals <= AGENT_REFUSAL_CODES
    assert "engine_unreachable" in AGENT_REFUSAL_CODES  # the agent's answer when vLLM is gone
