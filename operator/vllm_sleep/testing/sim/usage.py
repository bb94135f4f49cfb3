"""`vllm-sleep sim --help`: one line for every flag the simulator reads (args.py's sets).

docs/simulator.md is the long form; tests/unit/sim/test_usage.py keeps the two and the parser
from drifting apart.
"""

from __future__ import annotations

from .args import SIM_FLAGS
from .config import (
    DEFAULT_DEVICE_MEMORY,
    DEFAULT_KV_MARGIN,
    DEFAULT_PROFILE,
    DEFAULT_RESIDUAL,
    DEFAULT_UTIL,
    DEFAULT_WEIGHTS,
    PROFILES,
    SimConfig,
    sim_env_name,
)
from .units import GiB

# vLLM `serve` flags the simulator honours: (flag with its value, what it does here). The
# defaults stated here and below are SimConfig's and config.py's, not a second spelling of them.
VLLM_FLAG_HELP: tuple[tuple[str, str], ...] = (
    (
        "MODEL, --model M",
        "model name; weights guessed from it (...-8B... = 16 GB) unless --weights-size",
    ),
    ("--host H", "address to bind (default: all interfaces, as vLLM)"),
    ("--port P", f"port to listen on (default {SimConfig.port}; 0: any free port)"),
    ("--served-model-name N [N ...]", "names accepted in `model`; the first labels metrics"),
    ("--enable-sleep-mode", "recorded (sleep works without it); 0.34: registers /checkpoint/*"),
    (
        "--gpu-memory-utilization U",
        f"share of the device (default {DEFAULT_UTIL['0.34']}; legacy {DEFAULT_UTIL['legacy']}; "
        "0.34 without a KV size 1.0)",
    ),
    (
        "--kv-cache-memory-bytes Q",
        "a fixed KV cache size (also as its prefix --kv-cache-memory)",
    ),
    (
        "--speculative-config JSON",
        'a draft model if the config has a "model" (0.34 level 2 drops it)',
    ),
    ("--speculative-model M", "a draft model (the flag before --speculative-config)"),
    (
        "--sleep-preserve-parameter-names P [P ...]",
        "glob/regex patterns kept through level 2 (draft.* keeps the draft)",
    ),
    (
        "--max-model-len L",
        f"context limit (8k = 8000, 8K = 8192; default {SimConfig.max_model_len})",
    ),
    (
        "--max-num-seqs N",
        f"requests running at once (default {SimConfig.max_num_seqs}); the rest wait",
    ),
    ("--api-key K [K ...]", "Bearer key for /v1, /v2, /inference, /cohere (also VLLM_API_KEY)"),
    ("--enable-server-load-tracking", "/load counts in-flight requests (else always 0)"),
)

# Simulator-only flags, each also settable as VLLM_SIM_<FLAG> (the flag wins).
_SIM_HELP: dict[str, tuple[str, str]] = {
    "--profile": (
        "|".join(PROFILES),
        f"vLLM version family to behave as (default {DEFAULT_PROFILE})",
    ),
    "--weights-size": (
        "Q",
        f"weight bytes (default: from MODEL, else {DEFAULT_WEIGHTS // GiB}Gi; env also VLLM_SIM_WEIGHTS_BYTES)",
    ),
    "--device-memory": (
        "Q",
        f"GPU memory of an engine without a shared device (default {DEFAULT_DEVICE_MEMORY // GiB}Gi)",
    ),
    "--residual-memory": (
        "Q",
        f"memory kept while asleep (default {DEFAULT_RESIDUAL / GiB:.1f} GiB; env also VLLM_SIM_RESIDUAL_BYTES)",
    ),
    "--kv-cache-margin": (
        "Q",
        f"what 0.34's extensible KV cache leaves free (default {DEFAULT_KV_MARGIN // GiB}Gi)",
    ),
    "--weight-allocations": (
        "N",
        f"weight allocations to map/unmap (default {SimConfig.weight_allocations})",
    ),
    "--vllm-version": ("V", "what /version says (default: the profile's release)"),
    "--fail-sleeps": ("N", "the first N memory-releasing sleeps fail vLLM's memory assertion"),
    "--time-scale": (
        "F",
        f"multiplies every duration (default {SimConfig.time_scale}; 0.01 = 100x faster)",
    ),
    "--default-max-tokens": (
        "N",
        f"max_tokens when a request gives none (default {SimConfig.default_max_tokens})",
    ),
    "--profiling-fraction": (
        "F",
        f"last fraction of the load that is memory profiling ({SimConfig.profiling_fraction})",
    ),
    "--load-seconds": ("S", "startup (load) duration"),
    "--first-sleep-seconds": ("S", "first level-1 sleep (pins the host backup)"),
    "--sleep-seconds": ("S", "later level-1 sleeps"),
    "--wake-seconds": ("S", "level-1 wake of all tags"),
    "--level2-sleep-seconds": ("S", "level-2 sleep (discard)"),
    "--reload-seconds": ("S", "level-2 reload (collective_rpc reload_weights)"),
    "--remap-seconds": ("S", "KV-only wake / level-2 kv_cache wake"),
    "--weights-map-seconds": ("S", "level-2 weights wake (map an empty pool)"),
    "--release-kv-seconds": ("S", "/release_kv_cache_memory"),
    "--ttft-seconds": ("S", "time to first token"),
    "--itl-seconds": ("S", "time per further token"),
    "--call-overhead-seconds": ("S", "added to every sleep/wake call"),
}


def sim_flag_help() -> tuple[tuple[str, str], ...]:
    """Every simulator flag with its env twin; a flag args.py reads but nobody described fails
    here rather than going missing from --help."""
    missing = SIM_FLAGS - set(_SIM_HELP)
    if missing:
        raise KeyError(f"simulator flags without help: {sorted(missing)}")
    return tuple(
        (f"{flag} {metavar}", f"{text} [{sim_env_name(flag)}]")
        for flag, (metavar, text) in _SIM_HELP.items()
    )


def _rows(rows: tuple[tuple[str, str], ...]) -> list[str]:
    width = max(len(left) for left, _ in rows)
    return [f"  {left.ljust(width)}  {text}" for left, text in rows]


def usage() -> str:
    return "\n".join(
        [
            "usage: vllm-sleep sim MODEL [vllm serve flags] [simulator flags]",
            "",
            "A simulated `vllm serve` (no GPU). Env: VLLM_SERVER_DEV_MODE=1 enables the dev routes",
            "(/sleep, /wake_up, ...) as in vLLM.",
            "",
            "vllm serve flags it honours:",
            *_rows(VLLM_FLAG_HELP),
            "",
            "simulator flags (or the VLLM_SIM_* env in brackets; the flag wins):",
            *_rows(sim_flag_help()),
            "",
            "Any other vLLM flag is accepted but not simulated: it is skipped with a warning",
            "(--flag=value, --flag value, or a boolean). Put MODEL first, or use --model, so an",
            "unknown boolean flag cannot take it as its value.",
            "Quantities: 16Gi, 16G, 512Mi or bytes. Docs: docs/simulator.md",
        ]
    )
