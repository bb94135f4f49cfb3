"""The engine's memory share (vLLM --gpu-memory-utilization) when the spec leaves it unset. Pure.

The pod always carries an explicit share, never the version's default: on vLLM 0.34 an unset
share means "all free device memory" (the extensible KV cache), which leaves no room for a
neighbour on the device to start or for a sleeping one to wake (docs/api.md, "resources").
"""

from __future__ import annotations

from ..api.gpu_pool import GPUPoolSpec
from ..api.model_deployment import ModelDeploymentSpec

# Whole devices (no GPUPool): vLLM's own default before 0.34, which leaves room for the CUDA
# context outside the share; never 0.34's 1.0 (all free memory, the extensible KV cache).
WHOLE_DEVICE_UTILIZATION = 0.9
_MIN_UTILIZATION = 0.01  # the CRD requires a share > 0


def effective_utilization(spec: ModelDeploymentSpec, pool: GPUPoolSpec | None) -> float:
    """`resources.gpuMemoryUtilization` when set, else the share derived from where it runs.

    In a GPUPool: the share that lets `slotsPerDevice` replicas live on one device with one
    awake, (deviceMemory - (slotsPerDevice - 1) x sleepResidual) / deviceMemory, rounded down
    to two decimals so the device always fits one awake engine plus its neighbours' residuals.
    """
    set_share = spec.resources.gpu_memory_utilization
    if set_share is not None:
        return set_share
    if pool is None:
        return WHOLE_DEVICE_UTILIZATION
    device = pool.device_memory.bytes()
    free = device - (pool.slots_per_device - 1) * pool.sleep_residual.bytes()
    # Integer hundredths: a float division could round 0.5 down to 0.49.
    hundredths = (100 * free) // device
    return max(_MIN_UTILIZATION, min(1.0, hundredths / 100))
