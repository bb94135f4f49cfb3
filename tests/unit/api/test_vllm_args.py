"""Reading `vllm serve` arguments as vLLM's parser does (api.vllm_args)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.vllm_args import flag_value, human_readable_int, max_model_len


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        (" 4096 ", 4096),
        ("8k", 8000),
        ("8K", 8192),
        ("1.5k", 1500),
        ("1m", 1_000_000),
        ("1M", 1 << 20),
        ("2g", 2 * 10**9),
        ("1T", 1 << 40),
        ("1.5K", None),  # vLLM refuses decimals with a binary suffix
        ("auto", None),
        ("", None),
        ("8 k", None),
    ],
)
def test_human_readable_int_as_vllm_reads_it(text: str, value: int | None) -> None:
    assert human_readable_int(text) == value


def test_the_last_flag_wins_in_either_spelling() -> None:
    args = ["--max_model_len=1", "--dtype", "half", "--max-model-len", "2"]
    assert flag_value(args, "max-model-len") == "2"
    assert flag_value(args, "dtype") == "half"
    assert flag_value(args, "quantization") is None
    # A flag only matches whole: a longer flag sharing its prefix is another flag.
    assert flag_value(["--max-model-len-x", "3"], "max-model-len") is None


@given(st.lists(st.text(max_size=12), max_size=8))
def test_max_model_len_is_positive_or_unknown_and_never_raises(args: list[str]) -> None:
    n = max_model_len(args)
    assert n is None or n > 0
