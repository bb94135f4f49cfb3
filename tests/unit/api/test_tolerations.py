"""A toleration matches a taint as core/v1 says (what a GPUPool counts its nodes by)."""

from __future__ import annotations

from typing import Any

import pytest

from vllm_sleep.api.common import Toleration, untolerated

GPU = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("toleration", "taint", "tolerated"),
    [
        ({"operator": "Exists"}, GPU, True),  # no key, Exists: every taint
        ({"key": "nvidia.com/gpu", "operator": "Exists"}, GPU, True),  # any value, any effect
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoExecute"}, GPU, False),
        ({"key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}, GPU, True),
        ({"key": "nvidia.com/gpu", "value": "present"}, GPU, True),  # Equal is the default
        ({"key": "nvidia.com/gpu", "value": "absent"}, GPU, False),
        ({"key": "nvidia.com/gpu"}, GPU, False),  # Equal with no value: the taint's is set
        ({"key": "other", "operator": "Exists"}, GPU, False),
        ({"key": "k"}, {"key": "k", "effect": "NoSchedule"}, True),  # both values empty
    ],
)
def test_a_toleration_matches_a_taint_as_core_v1_does(
    toleration: dict[str, Any], taint: dict[str, str], tolerated: bool
) -> None:
    assert Toleration.model_validate(toleration).tolerates(taint) is tolerated


def test_only_no_schedule_and_no_execute_taints_keep_a_pod_off() -> None:
    soft = {"key": "x", "effect": "PreferNoSchedule"}
    hard = {"key": "y", "effect": "NoExecute"}
    assert untolerated(
        [soft, hard, GPU], [Toleration.model_validate({"key": "y", "operator": "Exists"})]
    ) == [GPU]
    assert untolerated([soft], []) == []
