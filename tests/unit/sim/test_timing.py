"""The timing model follows the H100 measurements (docs/vllm.md "Measured on H100")."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.testing.sim import GiB, default_timings, parse_bytes
from vllm_sleep.testing.sim.units import parse_token_count


@pytest.mark.parametrize(
    ("gib", "wake_s", "sleep_s", "pin_s"),
    [  # docs/vllm.md: H100, vLLM's cuMem path, 300 allocations (±10 %)
        (2, 0.053, 0.049, 0.56),
        (4, 0.094, 0.093, 1.13),
        (8, 0.179, 0.175, 2.31),
        (16, 0.342, 0.336, 4.17),
        (64, 1.33, 1.30, 17.0),
    ],
)
def test_the_model_follows_the_h100_measurements(
    gib: int, wake_s: float, sleep_s: float, pin_s: float
) -> None:
    t = default_timings(gib * GiB, profile="0.34")
    c = t.call_overhead
    assert t.wake - c == pytest.approx(wake_s, rel=0.1)
    assert t.sleep - c == pytest.approx(sleep_s, rel=0.1)
    assert t.first_sleep - t.sleep == pytest.approx(pin_s, rel=0.1)


def test_older_versions_pin_at_the_pinned_allocators_rate() -> None:
    new, old = default_timings(32 * GiB, profile="0.34"), default_timings(32 * GiB, profile="0.33")
    assert old.first_sleep - old.sleep == pytest.approx(22.2, rel=0.01)  # 0.69 s/GiB
    assert new.first_sleep < old.first_sleep and new.sleep == old.sleep


def test_a_kv_only_wake_costs_a_remap_not_a_copy() -> None:
    t = default_timings(16 * GiB, 40 * GiB)
    assert t.remap - t.call_overhead == pytest.approx(0.001 + 0.030, abs=1e-6)  # 40 GiB: 30 ms
    assert t.release_kv - t.call_overhead == pytest.approx(0.035, abs=1e-6)
    assert t.remap < t.wake / 5  # the tier's point: well below a 16 GiB weight copy


def test_allocation_count_and_kv_size_add_to_the_wake() -> None:
    base = default_timings(16 * GiB)
    assert default_timings(16 * GiB, allocations=600).wake == pytest.approx(base.wake + 0.015)
    assert default_timings(16 * GiB, 40 * GiB).wake == pytest.approx(base.wake + 0.030)


@given(
    st.integers(min_value=1, max_value=400).map(lambda n: n * GiB),
    st.integers(min_value=0, max_value=80).map(lambda n: n * GiB),
    st.sampled_from(["0.34", "0.33", "legacy"]),
)
def test_physics_bounds_hold_for_every_size(w: int, kv: int, profile: str) -> None:
    t = default_timings(w, kv, profile=profile)
    assert t.wake >= w / 52e9 and t.sleep >= w / 54e9
    assert t.first_sleep > t.sleep > t.level2_sleep
    assert t.wake > t.remap and t.wake > t.weights_map
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
    assert [parse_token_count(x) for x in ("1.5k", "2M", " 32768 ")] == [1500, 2 * 2**20, 32768]


@pytest.mark.parametrize("text", ["1.5K", "0.5M", "2.0G", "8 k", "", "16 gigs", "-1"])
def test_parse_token_count_refuses_what_vllm_refuses(text: str) -> None:
    # vLLM's human_readable_int allows no decimals with a binary suffix ("did you mean 1.5k?").
    with pytest.raises(ValueError, match="not a token count"):
        parse_token_count(text)
