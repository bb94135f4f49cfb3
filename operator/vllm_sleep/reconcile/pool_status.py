"""A GPUPool's status from its scheduler snapshot: per device, who is placed, who is awake and
the bytes committed (awake shares + sleeping residuals). Pure."""

from __future__ import annotations

from typing import Any

from ..api.gpu_pool import DeviceStatus, GPUPoolStatus, Sharing
from ..scheduler import EngineState, Pool
from ..scheduler.accounting import device_committed
from .pool_devices import claim_name


def pool_status(pool: Pool, sharing: Sharing) -> dict[str, Any]:
    devices = []
    for d in pool.devices:
        here = pool.on_device(d.id)
        devices.append(
            DeviceStatus(
                node=d.node,
                device=d.id,
                claim=claim_name(d.id) if sharing == Sharing.DRA else None,
                models=sorted(e.replica for e in here),
                awake=sorted(e.replica for e in here if e.state == EngineState.AWAKE),
                committed_bytes=device_committed(pool, d.id),
            )
        )
    status = GPUPoolStatus(
        nodes=len(pool.nodes),
        devices=len(pool.devices),
        models=len({e.model for e in pool.engines}),
        device_states=devices,
    )
    out: dict[str, Any] = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    out.pop("conditions", None)  # not ours to reset: a merge patch keeps what others wrote
    return out
