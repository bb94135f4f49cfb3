"""The sim-kubelet can stretch its in-process agents' health polls (a big fleet's idle cost)."""

from __future__ import annotations

from vllm_sleep.agent import AgentConfig
from vllm_sleep.testing.kubelet.containers import AGENT_HEALTH_INTERVAL_ENV, agent_args

TOKEN = {"VLLM_SLEEP_CONTROL_TOKEN": "t" * 32}


def test_the_health_interval_is_the_variables_when_set_else_the_pods() -> None:
    pod_args = ["--health-interval=5"]
    assert agent_args(pod_args, {}) == pod_args
    stretched = agent_args(pod_args, {AGENT_HEALTH_INTERVAL_ENV: "30"})
    assert AgentConfig.from_cli(stretched, TOKEN).health_interval == 30.0
