"""Where a model's GPUs come from, or the condition that says why it cannot be placed."""

from __future__ import annotations

from typing import Any

from planning import body, model

from vllm_sleep.reconcile.builders import GpuAttachment
from vllm_sleep.reconcile.placement import Placement, place


def pooled() -> dict[str, Any]:
    raw = body()
    raw["spec"]["placement"] = {"pool": "p"}
    return raw


def pool(sharing: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "GPUPool",
        "metadata": {"name": "p"},
        "spec": {"sharing": sharing, "deviceMemory": "80Gi", **spec},
    }


def test_without_a_pool_the_model_takes_whole_devices() -> None:
    assert place(model(), None) == Placement(GpuAttachment())


def test_a_named_pool_that_does_not_exist_is_a_problem_not_a_crash() -> None:
    out = place(model(pooled()), None)
    assert out.gpu is None and out.problem and "'p' does not exist" in out.problem


def test_an_invalid_pool_says_what_is_wrong() -> None:
    out = place(model(pooled()), {"metadata": {"name": "p"}, "spec": {"sharing": "Nope"}})
    assert out.gpu is None and out.problem and out.problem.startswith("GPUPool 'p' is invalid")


def test_dra_sharing_attaches_the_pool_and_the_scheduler_seats_each_pod() -> None:
    out = place(model(pooled()), pool("DRA"))
    assert out.problem is None and out.gpu is not None and out.gpu.pool is not None
    assert out.gpu.claim is None  # the claim comes with the seat, per device


def test_a_pooled_model_runs_on_one_device() -> None:
    raw = pooled()
    raw["spec"]["resources"]["gpus"] = 2
    out = place(model(raw), pool("TimeSlicing"))
    assert out.gpu is None and out.problem and "resources.gpus 1" in out.problem


def test_time_slicing_attaches_the_pool() -> None:
    out = place(model(pooled()), pool("TimeSlicing"))
    assert out.problem is None and out.gpu is not None and out.gpu.pool is not None
