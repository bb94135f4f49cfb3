"""GPUPool status per device (`status.deviceStates`) from a pool snapshot."""

from __future__ import annotations

from ..api.gpu_pool import DeviceStatus
from .accounting import device_committed
from .model import EngineState, Pool


def device_states(pool: Pool) -> list[DeviceStatus]:
    """Per device, in the pool's order: replicas placed there, those awake, committed bytes
    (awake and unsettled shares + sleeping residuals). The DRA claim is the operator's to add."""
    return [
        DeviceStatus(
            node=d.node,
            device=d.id,
            models=sorted(e.replica for e in pool.on_device(d.id)),
            awake=sorted(e.replica for e in pool.on_device(d.id) if e.state == EngineState.AWAKE),
            committed_bytes=device_committed(pool, d.id),
        )
        for d in pool.devices
    ]
