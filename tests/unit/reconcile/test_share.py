"""The memory share of a model whose spec leaves `resources.gpuMemoryUtilization` unset."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api import GPUPoolSpec, ModelDeploymentSpec
from vllm_sleep.reconcile.share import effective_utilization

GIB = 2**30


def spec(**resources: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": "org/m",
            "image": "vllm/vllm-openai:v0.34.0",
            "resources": {"weightsSize": "8Gi", **resources},
        }
    )


def pool(**over: Any) -> GPUPoolSpec:
    return GPUPoolSpec.model_validate({"deviceMemory": "80Gi", **over})


def test_a_set_share_is_used_as_is_in_or_out_of_a_pool() -> None:
    assert effective_utilization(spec(gpuMemoryUtilization=0.45), None) == 0.45
    assert effective_utilization(spec(gpuMemoryUtilization=0.45), pool()) == 0.45


def test_whole_devices_get_vllms_pre_0_34_default() -> None:
    assert effective_utilization(spec(), None) == 0.9


def test_a_resources_less_spec_is_valid_and_gets_a_share() -> None:
    bare = ModelDeploymentSpec.model_validate(
        {"model": "org/m", "image": "vllm/vllm-openai:v0.34.0", "sleep": {"level": 2}}
    )
    assert bare.resources.gpu_memory_utilization is None
    assert effective_utilization(bare, None) == 0.9


def test_a_pools_share_leaves_room_for_the_sleeping_neighbours() -> None:
    assert effective_utilization(spec(), pool()) == 0.92  # (80 - 3 x 2) / 80 = 0.925
    assert effective_utilization(spec(), pool(slotsPerDevice=1)) == 1.0
    # Exactly two decimals: no float rounding below the true value.
    assert effective_utilization(spec(), pool(slotsPerDevice=2, sleepResidual="40Gi")) == 0.5


@given(
    device_gib=st.integers(min_value=8, max_value=192),
    slots=st.integers(min_value=1, max_value=8),
    residual_mib=st.integers(min_value=256, max_value=4096),
)
def test_one_awake_engine_and_the_residuals_always_fit(
    device_gib: int, slots: int, residual_mib: int
) -> None:
    p = pool(
        deviceMemory=f"{device_gib}Gi",
        slotsPerDevice=slots,
        sleepResidual=f"{residual_mib}Mi",
        sharing="TimeSlicing" if slots > 1 else "Exclusive",
    )
    share = effective_utilization(spec(), p)
    device = device_gib * GIB
    residuals = (slots - 1) * residual_mib * 2**20
    assert 0 < share <= 1 and abs(share * 100 - round(share * 100)) < 1e-9
    if device - residuals >= device // 100:  # below 1% no engine fits; the share is 0.01
        assert int(share * device) + residuals <= device
        assert share + 0.01 > (device - residuals) / device  # rounded down, by less than 0.01
