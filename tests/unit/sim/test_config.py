"""`vllm serve` argument parsing, VLLM_SIM_* env, VLLM_SERVER_DEV_MODE."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.testing.sim import GiB, SimConfig, SimConfigError
from vllm_sleep.testing.sim.config import guess_weights_bytes, parse_dev_mode


def cfg(*argv: str, **env: str) -> SimConfig:
    return SimConfig.from_cli(list(argv), env)


def test_vllm_serve_arguments() -> None:
    c = cfg(
        "org/Llama-3.1-8B",
        "--host",
        "127.0.0.1",
        "--port=8001",
        "--served-model-name",
        "a",
        "b",
        "--enable-sleep-mode",
        "--gpu-memory-utilization",
        "0.45",
        "--max-model-len",
        "8k",
        "--api-key",
        "k",
    )
    assert (c.model, c.host, c.port, c.served_names) == (
        "org/Llama-3.1-8B",
        "127.0.0.1",
        8001,
        ("a", "b"),
    )
    assert c.enable_sleep_mode and c.gpu_memory_utilization == 0.45 and c.max_model_len == 8000
    assert c.api_keys == ("k",) and c.profile == "0.34" and not c.dev_mode


def test_model_flag_and_defaults() -> None:
    c = cfg("--model", "m")
    assert c.model == "m" and c.served_names == ("m",) and c.port == 8000
    assert c.host is None  # all interfaces, like vLLM
    assert c.residual == int(1.4 * GiB)  # the field's single-GPU residual


@pytest.mark.parametrize(
    ("argv", "util", "extensible"),
    [
        (["m"], 1.0, True),  # 0.34: no share given -> 1.0, extensible KV cache
        (["m", "--gpu-memory-utilization", "0.4"], 0.4, False),
        (["m", "--kv-cache-memory-bytes", "8Gi"], 0.92, False),  # a KV size turns it off
        (["m", "--kv-cache-memory=8Gi"], 0.92, False),  # argparse's prefix of the flag
        (["m", "--profile", "0.33"], 0.92, False),
        (["m", "--profile", "legacy"], 0.9, False),
    ],
)
def test_memory_share_defaults_by_version(argv: list[str], util: float, extensible: bool) -> None:
    c = cfg(*argv)
    assert (c.util, c.extensible_kv) == (util, extensible)
    if "8Gi" in " ".join(argv):
        assert c.kv_cache_memory_bytes == 8 * GiB


@pytest.mark.parametrize(
    ("argv", "draft", "preserved"),
    [
        (["m"], False, False),
        (
            ["m", "--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'],
            False,
            False,
        ),
        (
            ["m", "--speculative-config", '{"model": "org/draft-1B", "num_speculative_tokens": 5}'],
            True,
            False,
        ),
        (
            [
                "m",
                "--speculative-model",
                "org/draft-1B",
                "--sleep-preserve-parameter-names",
                "draft.*",
            ],
            True,
            True,
        ),
        (
            ["m", "--speculative-model=d", "--sleep-preserve-parameter-names=lm_head.*,draft\\..*"],
            True,
            True,
        ),
        (
            ["m", "--speculative-model=d", "--sleep-preserve-parameter-names", "lm_head.*"],
            True,
            False,
        ),
    ],
)
def test_speculative_draft_and_preserved_names(
    argv: list[str], draft: bool, preserved: bool
) -> None:
    c = cfg(*argv)
    assert (c.speculative_draft, c.draft_preserved) == (draft, preserved)


def test_unknown_flags_are_ignored_in_every_form() -> None:
    c = cfg(
        "--trust-remote-code",
        "m",
        "--tensor-parallel-size",
        "1",
        "--dtype=bfloat16",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--seed",
        "-1",
        "--port",
        "9000",
    )
    assert c.model == "m" and c.port == 9000
    assert c.ignored_args == (
        "--trust-remote-code",
        "--tensor-parallel-size 1",
        "--dtype=bfloat16",
        "--enforce-eager",
        "--no-enable-prefix-caching",
        "--seed -1",
    )


@given(st.lists(st.from_regex(r"--x-[a-z]{1,8}=[a-z0-9]{0,6}", fullmatch=True), max_size=5))
def test_inline_unknown_flags_never_eat_the_model(flags: list[str]) -> None:
    assert cfg(*flags, "the-model", *flags).model == "the-model"


@pytest.mark.parametrize(
    ("raw", "expected"), [("1", True), ("0", False), (" 1", True), ("2", True)]
)
def test_dev_mode_is_bool_of_int(raw: str, expected: bool) -> None:
    assert parse_dev_mode({"VLLM_SERVER_DEV_MODE": raw}) is expected


@pytest.mark.parametrize("raw", ["true", "yes", ""])
def test_dev_mode_text_is_a_startup_error(raw: str) -> None:
    with pytest.raises(SimConfigError, match="bool\\(int"):
        cfg("m", VLLM_SERVER_DEV_MODE=raw)


def test_sim_settings_from_env_and_flags_win() -> None:
    env = {
        "VLLM_SIM_PROFILE": "legacy",
        "VLLM_SIM_WEIGHTS_BYTES": "16Gi",
        "VLLM_SIM_TIME_SCALE": "0.5",
        "VLLM_SIM_LOAD_SECONDS": "7",
        "VLLM_SIM_DEVICE_MEMORY": "40Gi",
        "VLLM_SIM_RESIDUAL_BYTES": "2Gi",
    }
    c = SimConfig.from_cli(["m"], env)
    assert (c.profile, c.weights_bytes, c.time_scale, c.timings.load) == (
        "legacy",
        16 * GiB,
        0.5,
        7.0,
    )
    assert c.device_memory == 40 * GiB and c.residual == 2 * GiB
    c = SimConfig.from_cli(
        ["m", "--profile", "0.33", "--weights-size", "8G", "--load-seconds", "3"], env
    )
    assert (c.profile, c.weights_bytes, c.timings.load) == ("0.33", 8 * 10**9, 3.0)


def test_weights_guessed_from_the_model_name() -> None:
    assert guess_weights_bytes("meta-llama/Llama-3.1-8B-Instruct") == 16 * 10**9
    assert guess_weights_bytes("Qwen/Qwen2.5-0.5B") == 10**9
    assert guess_weights_bytes("gpt2") is None
    assert cfg("gpt2").weights_bytes == 16 * GiB


@pytest.mark.parametrize(
    "argv",
    [
        ["m", "--profile", "0.5"],
        ["m", "--gpu-memory-utilization", "1.5"],
        ["m", "--port"],
        ["m", "--weights-size", "lots"],
        ["m", "--wake-seconds", "-1"],
        ["m", "--served-model-name"],
        ["m", "--speculative-config", "{not json"],
        ["m", "--vllm-version", "latest"],
        ["m", "--fail-sleeps", "-1"],
        ["m", "--weight-allocations", "0"],
    ],
)
def test_bad_arguments_raise_config_errors(argv: list[str]) -> None:
    with pytest.raises(SimConfigError):
        SimConfig.from_cli(argv, {})


@pytest.mark.parametrize(
    ("argv", "version", "unsynced"),
    [
        (["m"], "0.34.0", False),
        (["m", "--profile", "legacy"], "0.16.0", False),
        (["m", "--vllm-version", "0.17.0"], "0.17.0", True),
        (["m", "--vllm-version", "v0.27.1"], "v0.27.1", True),
        (["m", "--vllm-version", "0.28.0"], "0.28.0", False),
    ],
)
def test_reported_version_and_the_unsynced_sleep_race(
    argv: list[str], version: str, unsynced: bool
) -> None:
    c = cfg(*argv)
    assert (c.version, c.unsynced_sleep) == (version, unsynced)
