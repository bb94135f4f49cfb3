"""Sleep level 0 (KV-only) in the API: accepted by the model and the CRD, and by the agent's
control API; the same three levels on both sides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from vllm_sleep.api import ModelDeploymentSpec
from vllm_sleep.api.agent_protocol import SLEEP_LEVELS

ROOT = Path(__file__).resolve().parents[3]
BASE = {
    "model": "m",
    "image": "vllm/vllm-openai:v0.34.0",
    "resources": {"gpuMemoryUtilization": 0.4},
}


def test_level_0_needs_no_weights_size() -> None:
    s = ModelDeploymentSpec.model_validate({**BASE, "sleep": {"level": 0}})
    assert s.sleep.level == 0  # no host backup: the weights stay on the GPU


def test_level_3_is_still_refused() -> None:
    with pytest.raises(ValidationError):
        ModelDeploymentSpec.model_validate({**BASE, "sleep": {"level": 3}})


def test_the_crd_and_the_agent_accept_the_same_levels() -> None:
    crd = yaml.safe_load((ROOT / "crds/modeldeployments.vllm-sleep.io.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    level = schema["properties"]["spec"]["properties"]["sleep"]["properties"]["level"]
    assert tuple(level["enum"]) == SLEEP_LEVELS == (0, 1, 2)
    assert "vLLM >= 0.31" in level["description"]
