"""The timing model: how long loads, sleeps, wakes and tokens take, before time scaling.

Defaults come from DESIGN.md "Measured physics" (H100 80GB, PCIe Gen5) and are linear in the
weight size W, so one seed calibrates every model size. Seeds at W = 75 GiB: first level-1 sleep
43 s, later level-1 sleeps 6.5 s, wake 1.5 s. Physics bounds: GPU->pinned host copy 55 GB/s,
pinned host->GPU copy ~48 GB/s. Every number can be overridden by a flag or VLLM_SIM_* env var.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .units import GiB

SEED_GIB = 75.0
CALL_OVERHEAD_S = 0.05  # HTTP + engine-core utility call round trip, every dev call
LOAD_BASE_S = 30.0  # process start, torch.compile and CUDA graph capture, independent of W
DISK_READ_BPS = 2e9  # safetensors from local NVMe into GPU: used by load and level-2 reload
D2H_BPS = 55e9  # GPU -> pinned host (measured)
H2D_BPS = 48e9  # pinned host -> GPU (measured 46-49 GB/s)
# First sleep = pinned allocation + copy. The seed (43 s at 75 GiB) minus the copy gives the
# effective pinned allocation rate (0.55 s/GiB; the microbenchmark measured 0.69 s/GiB).
PINNED_ALLOC_S_PER_GIB = (43.0 - SEED_GIB * GiB / D2H_BPS) / SEED_GIB
SLEEP_S_PER_GIB = 6.5 / SEED_GIB  # later sleeps reuse the cached pinned buffers
WAKE_S_PER_GIB = 1.5 / SEED_GIB
LEVEL2_SLEEP_S = 0.2  # discard: unmap only, no copy
REMAP_S = 0.01  # cuMem map of a pool (32 GiB malloc < 6 ms): kv_cache wake, level-2 weights wake
TTFT_S = 0.05
ITL_S = 0.02  # 50 tokens/s per request


@dataclass(frozen=True)
class Timings:
    """Unscaled durations in seconds. Sleep and wake totals include `call_overhead`."""

    load: float
    first_sleep: float
    sleep: float
    wake: float
    level2_sleep: float
    reload: float
    remap: float
    ttft: float
    itl: float
    call_overhead: float

    def with_overrides(self, overrides: dict[str, float]) -> Timings:
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown timing(s): {sorted(unknown)}")
        bad = {k: v for k, v in overrides.items() if v < 0}
        if bad:
            raise ValueError(f"timings must be >= 0: {bad}")
        return replace(self, **overrides)


def default_timings(weights_bytes: int) -> Timings:
    w_gib = weights_bytes / GiB
    c = CALL_OVERHEAD_S
    copy_out = weights_bytes / D2H_BPS
    return Timings(
        load=LOAD_BASE_S + weights_bytes / DISK_READ_BPS,
        first_sleep=c + PINNED_ALLOC_S_PER_GIB * w_gib + copy_out,
        sleep=c + max(copy_out, SLEEP_S_PER_GIB * w_gib),
        wake=c + max(weights_bytes / H2D_BPS, WAKE_S_PER_GIB * w_gib),
        level2_sleep=c + LEVEL2_SLEEP_S,
        reload=c + weights_bytes / DISK_READ_BPS,
        remap=c + REMAP_S,
        ttft=TTFT_S,
        itl=ITL_S,
        call_overhead=c,
    )


TIMING_FIELDS = tuple(Timings.__dataclass_fields__)
