"""The timing model: how long loads, sleeps, wakes and tokens take, before time scaling.

Defaults follow the H100 80GB measurements of vLLM's CUDA virtual-memory sleep path (docs/
simulator.md "Timing model" has the table and the curve next to the measurements):

- wake copies run at 52 GB/s, plus ~50 us per weight allocation mapped (300 allocations: 15 ms);
- sleep copies at 54 GB/s, plus ~25 us per allocation unmapped;
- the first level-1 sleep also pins the host backup: ~0.265 s/GiB on 0.34 (an exact-size mmap
  registered with cudaHostRegister), 0.69 s/GiB before (PyTorch's pinned allocator);
- the KV cache is never copied: mapping it costs ~0.75 ms/GiB, unmapping ~0.875 ms/GiB.

Every total can be overridden by a flag or VLLM_SIM_* env var.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .units import GiB

CALL_OVERHEAD_S = 0.005  # HTTP + engine-core utility call round trip, every dev call
LOAD_BASE_S = 30.0  # process start, torch.compile and CUDA graph capture, independent of W
DISK_READ_BPS = 2e9  # safetensors from local NVMe into GPU: used by load and level-2 reload
D2H_BPS = 54e9  # GPU -> pinned host copy (measured 54-55 GB/s)
H2D_BPS = 52e9  # pinned host -> GPU copy (measured 52 GB/s through vLLM's path)
MAP_S_PER_ALLOCATION = 50e-6  # cuMemCreate + Map + SetAccess: 6-22 ms for 300 allocations
UNMAP_S_PER_ALLOCATION = 25e-6  # what a sleep costs beyond its copy (fit of the sleep column)
DEFAULT_ALLOCATIONS = 300  # weight allocations of a typical model
# First-sleep backup pinning: 0.34 mmap + cudaHostRegister, 0.265 s/GiB (fit of 1-64 GiB;
# "about 0.25"); before, PyTorch's pinned allocator, 0.69 s/GiB.
PIN_S_PER_GIB = {"0.34": 0.265, "0.33": 0.69, "legacy": 0.69}
KV_MAP_BASE_S = 0.001
KV_MAP_S_PER_GIB = 0.030 / 40  # 40 GiB mapped in 30 ms
KV_UNMAP_S_PER_GIB = 0.035 / 40  # 40 GiB unmapped in 35 ms
TTFT_S = 0.05
ITL_S = 0.02  # 50 tokens/s per request


@dataclass(frozen=True)
class Timings:
    """Unscaled durations in seconds. Sleep and wake totals include `call_overhead`."""

    load: float
    first_sleep: float  # level 1, first time: pin the host backup, copy out, unmap the KV cache
    sleep: float  # level 1 later: copy out, unmap the KV cache
    wake: float  # level 1, all tags: map, copy back, map the KV cache
    level2_sleep: float  # discard: unmap only
    reload: float  # collective_rpc reload_weights: read the weights from disk
    remap: float  # map the KV cache only (KV-only tier wake, level-2 kv_cache wake)
    weights_map: float  # map an empty weights pool (level-2 weights wake, before the reload)
    release_kv: float  # /release_kv_cache_memory: unmap the KV cache
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


def default_timings(
    weights_bytes: int,
    kv_bytes: int = 0,
    *,
    profile: str = "0.34",
    allocations: int = DEFAULT_ALLOCATIONS,
) -> Timings:
    """The model for `weights_bytes` of weights in `allocations` allocations and a KV cache of
    `kv_bytes`, on a vLLM of `profile` (which decides the cost of pinning the host backup)."""
    w_gib, kv_gib = weights_bytes / GiB, kv_bytes / GiB
    c = CALL_OVERHEAD_S
    map_weights = allocations * MAP_S_PER_ALLOCATION
    kv_map = KV_MAP_BASE_S + KV_MAP_S_PER_GIB * kv_gib
    kv_unmap = KV_UNMAP_S_PER_GIB * kv_gib
    unmap_weights = allocations * UNMAP_S_PER_ALLOCATION
    sleep = c + unmap_weights + weights_bytes / D2H_BPS + kv_unmap
    return Timings(
        load=LOAD_BASE_S + weights_bytes / DISK_READ_BPS,
        first_sleep=sleep + PIN_S_PER_GIB.get(profile, PIN_S_PER_GIB["0.33"]) * w_gib,
        sleep=sleep,
        wake=c + map_weights + weights_bytes / H2D_BPS + kv_map,
        level2_sleep=c + unmap_weights + kv_unmap,
        reload=c + weights_bytes / DISK_READ_BPS,
        remap=c + kv_map,
        weights_map=c + map_weights,
        release_kv=c + kv_unmap,
        ttft=TTFT_S,
        itl=ITL_S,
        call_overhead=c,
    )


TIMING_FIELDS = tuple(Timings.__dataclass_fields__)
