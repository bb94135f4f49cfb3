"""Where a model's GPUs come from, or why it cannot be placed (a condition, never a crash). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.gpu_pool import GPUPool, Sharing
from ..api.model_deployment import ModelDeployment
from .builders import GpuAttachment


@dataclass(frozen=True)
class Placement:
    gpu: GpuAttachment | None  # None: no pod may be created or replaced (see `problem`)
    problem: str | None = None


def place(model: ModelDeployment, pool_body: Mapping[str, Any] | None) -> Placement:
    """`pool_body`: the GPUPool named by `spec.placement.pool` as last seen (None: not found)."""
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
    if pool.spec.sharing == Sharing.DRA:
        # Shared DRA claims are assigned per device by the GPU scheduler; until it places
        # this model, the pods would not know which claim to reference.
        return Placement(
            None,
            f"GPUPool {pool_name!r} shares devices with DRA, which needs the GPU scheduler "
            "to assign a device; use sharing TimeSlicing or Exclusive for now",
        )
    return Placement(GpuAttachment(pool=pool.spec))
