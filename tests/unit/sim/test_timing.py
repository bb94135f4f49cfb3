"""The timing model reproduces DESIGN.md's seeds and scales with the weight size."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.testing.sim import GiB, default_timings, parse_bytes
from vllm_sleep.testing.sim.units import parse_token_count


def test_seed_numbers_at_75_gib() -> None:
    t = default_timings(75 * GiB)
    assert t.first_sleep == pytest.approx(43.0 + t.call_overhead, abs=0.01)
    assert t.sleep == pytest.approx(6.5 + t.call_overhead, abs=0.01)
    # the seed wake (1.5 s) is below the 48 GB/s copy bound at 75 GiB, so the bound wins
    assert t.wake == pytest.approx(75 * GiB / 48e9 + t.call_overhead, abs=0.01)


@given(st.integers(min_value=1, max_value=400).map(lambda n: n * GiB))
def test_physics_bounds_hold_for_every_size(w: int) -> None:
    t = default_timings(w)
    assert t.wake >= w / 48e9 and t.sleep >= w / 55e9
    assert t.first_sleep > t.sleep > t.level2_sleep - 0.2
    assert t.reload == pytest.approx(t.call_overhead + w / 2e9)
    assert t.load == pytest.approx(30 + w / 2e9)


def test_overrides_validate() -> None:
    t = default_timings(GiB).with_overrides({"wake": 2.0})
    assert t.wake == 2.0
    with pytest.raises(ValueError):
        t.with_overrides({"nap": 1.0})


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("16Gi", 16 * GiB),
        ("80G", 80 * 10**9),
        ("1073741824", GiB),
        ("1.5Gi", 3 * GiB // 2),
        ("512Mi", 2**29),
    ],
)
def test_parse_bytes(text: str, n: int) -> None:
    assert parse_bytes(text) == n


@pytest.mark.parametrize("text", ["", "Gi", "16 gigs", "-1"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_parse_token_count() -> None:
    assert [parse_token_count(x) for x in ("4096", "8k", "8K", "1m")] == [4096, 8000, 8192, 10**6]
