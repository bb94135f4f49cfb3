"""SimConfig: one engine's settings from a `vllm serve` command line plus VLLM_SIM_* env.

A real `vllm serve` command line cannot carry simulator settings, so the operator and the
sim-kubelet pass them in the environment; simulator flags exist for standalone use and win over
env. VLLM_SERVER_DEV_MODE is parsed exactly as vLLM does (`bool(int(value))`).
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .args import SIM_FLAGS, parse_argv
from .timing import TIMING_FIELDS, Timings, default_timings
from .units import GiB, parse_bytes, parse_token_count
from .vllm_log import VLLMLogFile

log = logging.getLogger(__name__)

Profile = Literal["0.34", "0.33", "legacy"]
PROFILES: tuple[Profile, ...] = ("0.34", "0.33", "legacy")
DEFAULT_PROFILE: Profile = "0.34"
DEFAULT_WEIGHTS = 16 * GiB
DEFAULT_DEVICE_MEMORY = 80 * GiB
# CUDA context + cuBLAS + CUDA graphs + NCCL left on the GPU while asleep: ~1.4 GiB for a
# single-GPU model on H100 in the field (docs/vllm.md "Field facts"); a flag, since it varies per engine.
DEFAULT_RESIDUAL = int(1.4 * GiB)
# vLLM's --gpu-memory-utilization default: 0.9 up to 0.19, 0.92 from 0.20 (docs/vllm.md "Shared GPUs"). 0.34
# resolves an unset value to 1.0 when its extensible KV cache is on (see SimConfig.util).
DEFAULT_UTIL: dict[str, float] = {"0.34": 0.92, "0.33": 0.92, "legacy": 0.9}
DEFAULT_KV_MARGIN = 1 * GiB  # what 0.34's extensible KV cache leaves free after warm-up
VERSIONS: dict[str, str] = {"0.34": "0.34.0", "0.33": "0.33.0", "legacy": "0.16.0"}
DRAFT_PARAMETER = "draft.model.layers.0.weight"  # how a draft model's parameters are named


class SimConfigError(ValueError):
    """Bad arguments or environment: the simulated `vllm serve` refuses to start."""


@dataclass(frozen=True)
class SimConfig:
    model: str = "sim-model"
    served_model_names: tuple[str, ...] = ()
    host: str | None = None  # None = all interfaces, like vLLM
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    enable_sleep_mode: bool = False
    gpu_memory_utilization: float | None = None  # None: the version's default (see `util`)
    kv_cache_memory_bytes: int | None = None  # a fixed KV cache size (≥0.11)
    speculative_draft: bool = False  # --speculative-config names a draft model
    preserve_parameter_names: tuple[str, ...] = ()  # --sleep-preserve-parameter-names
    max_model_len: int = 8192
    max_num_seqs: int = 256
    enable_server_load_tracking: bool = False
    dev_mode: bool = False
    profile: Profile = DEFAULT_PROFILE
    device_memory: int = DEFAULT_DEVICE_MEMORY  # only for an engine without a shared device
    weights_bytes: int = DEFAULT_WEIGHTS
    residual_bytes: int | None = None  # None: DEFAULT_RESIDUAL
    kv_margin_bytes: int = DEFAULT_KV_MARGIN
    weight_allocations: int = 300
    vllm_version: str | None = None  # what /version reports; None: the profile's release
    fail_sleeps: int = 0  # the first N memory-releasing sleeps trip the neighbour assertion
    logging_config_path: str | None = None  # VLLM_LOGGING_CONFIG_PATH: file handlers (vllm_log.py)
    time_scale: float = 1.0  # multiplied with the host's scale
    default_max_tokens: int = 16
    profiling_fraction: float = 0.3  # the last 30 % of the load is vLLM's memory profiling
    timing_overrides: Mapping[str, float] = field(default_factory=dict)
    ignored_args: tuple[str, ...] = ()

    @property
    def served_names(self) -> tuple[str, ...]:
        return self.served_model_names or (self.model,)

    @property
    def legacy(self) -> bool:
        return self.profile == "legacy"

    @property
    def residual(self) -> int:
        return DEFAULT_RESIDUAL if self.residual_bytes is None else self.residual_bytes

    @property
    def extensible_kv(self) -> bool:
        """0.34's extensible KV cache: on unless a share or a KV size is given (docs/vllm.md "vLLM 0.34").
        The engine then skips the startup check and takes the memory free after warm-up."""
        return (
            self.profile == "0.34"
            and self.gpu_memory_utilization is None
            and self.kv_cache_memory_bytes is None
        )

    @property
    def util(self) -> float:
        """The --gpu-memory-utilization vLLM resolves: explicit, 1.0 (extensible), or default."""
        if self.gpu_memory_utilization is not None:
            return self.gpu_memory_utilization
        return 1.0 if self.extensible_kv else DEFAULT_UTIL[self.profile]

    @property
    def version(self) -> str:
        return self.vllm_version or VERSIONS[self.profile]

    @property
    def unsynced_sleep(self) -> bool:
        """vLLM 0.17-0.27: the worker does not synchronise the device before unmapping, so a
        sleep that aborts running requests races their kernels and the engine core dies
        (vllm#45520; device syncs arrived in 0.28 and 0.29). Set by --vllm-version."""
        m = re.match(r"v?(\d+)\.(\d+)", self.version)
        return m is not None and (0, 17) <= (int(m.group(1)), int(m.group(2))) < (0, 28)

    @property
    def keeps_backup(self) -> bool:
        """0.34 keeps the pinned host backup after a wake; before, it was freed on wake."""
        return self.profile == "0.34"

    @property
    def draft_preserved(self) -> bool:
        """Whether --sleep-preserve-parameter-names keeps a draft model through level 2."""
        return any(_name_matches(p, DRAFT_PARAMETER) for p in self.preserve_parameter_names)

    @property
    def timings(self) -> Timings:
        """Timings without a KV cache; an engine uses `timings_for` its real KV size."""
        return self.timings_for(0)

    def timings_for(self, kv_bytes: int) -> Timings:
        return default_timings(
            self.weights_bytes,
            kv_bytes,
            profile=self.profile,
            allocations=self.weight_allocations,
        ).with_overrides(dict(self.timing_overrides))

    @classmethod
    def from_cli(cls, argv: list[str], env: Mapping[str, str]) -> SimConfig:
        try:
            return _from_cli(argv, env)
        except SimConfigError:
            raise
        except ValueError as e:
            raise SimConfigError(str(e)) from e


def _name_matches(pattern: str, name: str) -> bool:
    """A parameter-name pattern as a glob ('draft.*') or a regular expression ('draft\\..*')."""
    if fnmatch.fnmatchcase(name, pattern):
        return True
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def parse_dev_mode(env: Mapping[str, str]) -> bool:
    """vLLM envs.py: `bool(int(os.getenv("VLLM_SERVER_DEV_MODE", "0")))`; "true" is a crash."""
    raw = env.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        return bool(int(raw))
    except ValueError as e:
        raise SimConfigError(
            f"VLLM_SERVER_DEV_MODE={raw!r}: vLLM parses it as bool(int(value)), so it must be "
            f"an integer such as 1 or 0 ({e})"
        ) from e


def guess_weights_bytes(model: str) -> int | None:
    """'meta-llama/Llama-3.1-8B-Instruct' -> 8e9 params x 2 bytes (bf16)."""
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])", model.rsplit("/", 1)[-1])
    return int(float(m.group(1)) * 1e9 * 2) if m else None


def _setting(
    flag: str, parsed_last: str | None, env: Mapping[str, str], *env_names: str
) -> str | None:
    if parsed_last is not None:
        return parsed_last
    for name in env_names:
        if env.get(name, "") != "":
            return env[name]
    return None


def sim_env_name(flag: str) -> str:
    """The VLLM_SIM_* twin of a simulator flag: --time-scale -> VLLM_SIM_TIME_SCALE."""
    return "VLLM_SIM_" + flag.removeprefix("--").replace("-", "_").upper()


def _from_cli(argv: list[str], env: Mapping[str, str]) -> SimConfig:
    p = parse_argv(argv)
    for extra in p.ignored:
        log.warning("vllm-sleep sim: ignoring vLLM argument %r (not simulated)", extra)
    model = p.last("--model") or (p.positionals[0] if p.positionals else None)
    if p.positionals[1:] or (p.last("--model") and p.positionals):
        log.warning("vllm-sleep sim: ignoring extra positional arguments %r", p.positionals[1:])
    model = model or env.get("VLLM_SIM_MODEL") or "sim-model"

    def sim(flag: str, *extra_env: str) -> str | None:
        return _setting(flag, p.last(flag), env, sim_env_name(flag), *extra_env)

    profile = sim("--profile") or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise SimConfigError(
            f"--profile/VLLM_SIM_PROFILE must be one of {PROFILES}, got {profile!r}"
        )
    weights_raw = sim("--weights-size", "VLLM_SIM_WEIGHTS_BYTES")
    weights = (
        parse_bytes(weights_raw) if weights_raw else (guess_weights_bytes(model) or DEFAULT_WEIGHTS)
    )
    util_raw = p.last("--gpu-memory-utilization")
    util = float(util_raw) if util_raw is not None else None
    if util is not None and not 0 < util <= 1:
        raise SimConfigError(f"--gpu-memory-utilization must be in (0, 1], got {util}")
    kv_raw = p.last("--kv-cache-memory-bytes") or p.last("--kv-cache-memory")
    overrides: dict[str, float] = {}
    for name in TIMING_FIELDS:
        flag = "--" + name.replace("_", "-") + "-seconds"
        if flag in SIM_FLAGS and (raw := sim(flag)) is not None:
            overrides[name] = float(raw)
    residual_raw = sim("--residual-memory", "VLLM_SIM_RESIDUAL_BYTES")
    margin_raw = sim("--kv-cache-margin")
    fail_sleeps_raw = sim("--fail-sleeps")
    allocations_raw = sim("--weight-allocations")
    device_raw = sim("--device-memory")
    api_keys = tuple(p.values.get("--api-key", ())) or (
        (env["VLLM_API_KEY"],) if env.get("VLLM_API_KEY") else ()
    )
    cfg = SimConfig(
        model=model,
        served_model_names=tuple(p.values.get("--served-model-name", ())),
        host=p.last("--host"),
        port=int(p.last("--port") or 8000),
        api_keys=api_keys,
        enable_sleep_mode=_truthy(p.last("--enable-sleep-mode")),
        gpu_memory_utilization=util,
        kv_cache_memory_bytes=parse_bytes(kv_raw) if kv_raw else None,
        speculative_draft=_has_draft(p.last("--speculative-config"), p.last("--speculative-model")),
        preserve_parameter_names=tuple(
            name.strip()
            for raw in p.values.get("--sleep-preserve-parameter-names", ())
            for name in raw.split(",")
            if name.strip()
        ),
        max_model_len=parse_token_count(p.last("--max-model-len") or "8192"),
        max_num_seqs=int(p.last("--max-num-seqs") or 256),
        enable_server_load_tracking=_truthy(p.last("--enable-server-load-tracking")),
        dev_mode=parse_dev_mode(env),
        profile=profile,
        device_memory=parse_bytes(device_raw) if device_raw else DEFAULT_DEVICE_MEMORY,
        weights_bytes=weights,
        residual_bytes=parse_bytes(residual_raw) if residual_raw else None,
        kv_margin_bytes=parse_bytes(margin_raw) if margin_raw else DEFAULT_KV_MARGIN,
        weight_allocations=int(allocations_raw) if allocations_raw else 300,
        vllm_version=sim("--vllm-version"),
        fail_sleeps=int(fail_sleeps_raw) if fail_sleeps_raw else 0,
        logging_config_path=VLLMLogFile.config_path(env),
        time_scale=float(sim("--time-scale") or 1.0),
        default_max_tokens=int(sim("--default-max-tokens") or 16),
        profiling_fraction=float(sim("--profiling-fraction") or 0.3),
        timing_overrides=overrides,
        ignored_args=tuple(p.ignored),
    )
    _validate(cfg)
    return cfg


def _has_draft(config: str | None, model: str | None) -> bool:
    """A speculative config with a `model` runs a draft model (ngram and friends do not)."""
    if model:
        return True
    if not config:
        return False
    try:
        parsed = json.loads(config)
    except ValueError as e:
        raise SimConfigError(f"--speculative-config is not valid JSON: {e}") from e
    if not isinstance(parsed, dict):
        raise SimConfigError("--speculative-config must be a JSON object")
    return bool(parsed.get("model"))


def _truthy(raw: str | None) -> bool:
    return raw is not None and raw.lower() not in ("false", "0", "no")


def _validate(cfg: SimConfig) -> None:
    if not 0 <= cfg.port < 65536:  # 0: any free port (tests)
        raise SimConfigError(f"--port out of range: {cfg.port}")
    if cfg.time_scale < 0:
        raise SimConfigError("--time-scale must be >= 0")
    if not 0 <= cfg.profiling_fraction <= 1:
        raise SimConfigError("--profiling-fraction must be in [0, 1]")
    if cfg.fail_sleeps < 0:
        raise SimConfigError("--fail-sleeps must be >= 0")
    if cfg.vllm_version is not None and not re.match(r"v?\d+\.\d+", cfg.vllm_version):
        raise SimConfigError(f"--vllm-version must look like 0.27.1, got {cfg.vllm_version!r}")
    if cfg.weight_allocations < 1:
        raise SimConfigError("--weight-allocations must be >= 1")
    if cfg.default_max_tokens < 1 or cfg.max_model_len < 1 or cfg.max_num_seqs < 1:
        raise SimConfigError(
            "--default-max-tokens, --max-model-len and --max-num-seqs must be >= 1"
        )
    cfg.timings  # noqa: B018 - raises on negative or unknown timing overrides
