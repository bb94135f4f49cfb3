"""A GPUPool's status from its scheduler snapshot: per device, who is placed, who is awake and
the bytes committed (awake shares + sleeping residuals). Pure."""

from __future__ import annotations

from typing import Any

from ..api.gpu_pool import GPUPoolStatus, Sharing
from ..scheduler import Pool
from ..scheduler.status import device_states
from .pool_devices import claim_name


def pool_status(pool: Pool, sharing: Sharing) -> dict[str, Any]:
    devices = [
        d.model_copy(update={"claim": claim_name(d.device)}) if sharing == Sharing.DRA else d
        for d in device_states(pool)
    ]
    committed = sum(d.committed_bytes or 0 for d in devices)
    memory = sum(d.memory for d in pool.devices)
    status = GPUPoolStatus(
        nodes=len(pool.nodes),
        devices=len(pool.devices),
        models=len({e.model for e in pool.engines}),
        replicas=sum(len(d.models) for d in devices),
        awake=sum(len(d.awake) for d in devices),
        committed_bytes=committed,
        committed_percent=round(100 * committed / memory) if memory else 0,
        device_states=devices,
    )
    out: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("conditions", None)  # not ours to reset: a merge patch keeps what others wrote
    return out
