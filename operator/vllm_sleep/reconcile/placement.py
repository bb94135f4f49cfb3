"""Where a model's GPUs come from, or why it cannot be placed (a condition, never a crash). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.gpu_pool import GPUPool
from ..api.model_deployment import ModelDeployment
from .builders import GpuAttachment


@dataclass(frozen=True)
class Placement:
    gpu: GpuAttachment | None  # None: no pod may be created or replaced (see `problem`)
    problem: str | None = None


def place(model: ModelDeployment, pool_body: Mapping[str, Any] | None) -> Placement:
    """`pool_body`: the GPUPool named by `spec.placement.pool` as last seen (None: not found).

    In a pool, each replica's device is chosen by the pool's scheduler (`reconcile.pool_gate`),
    which seats the pod on it (node pin, device annotation, the device's claim under DRA)."""
    pool_name = model.spec.placement.pool
    if not pool_name:
        return Placement(GpuAttachment())
    if pool_body is None:
        return Placement(
            None, f"GPUPool {pool_name!r} does not exist; create it or fix spec.placement.pool"
        )
    try:
        pool = GPUPool.from_body(dict(pool_body))
    except ValueError as e:
        return Placement(None, f"GPUPool {pool_name!r} is invalid: {e}")
    if model.spec.resources.gpus != 1:
        return Placement(
            None,
            f"a model in GPUPool {pool_name!r} runs on one device (resources.gpus 1), "
            f"not {model.spec.resources.gpus}",
        )
    return Placement(GpuAttachment(pool=pool.spec))
