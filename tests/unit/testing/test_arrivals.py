"""The soak's arrival generator: seeded, Zipf-shared, bursty (Gamma) and diurnally modulated."""

from __future__ import annotations

import itertools
import statistics
from collections import Counter

import pytest

from vllm_sleep.testing.arrivals import TraceShape, arrivals

pytestmark = pytest.mark.unit

MODELS = [f"m{i}" for i in range(6)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_the_same_seed_gives_the_same_trace_and_another_seed_another() -> None:
    shape = TraceShape()
    assert arrivals(MODELS, 300, 7, shape) == arrivals(MODELS, 300, 7, shape)
    assert arrivals(MODELS, 300, 7, shape) != arrivals(MODELS, 300, 8, shape)


def test_arrivals_are_in_time_order_within_the_window() -> None:
    trace = arrivals(MODELS, 600, 1, TraceShape())
    times = [a.at for a in trace]
    assert times == sorted(times) and times[0] >= 0 and times[-1] < 600


def test_a_models_stream_does_not_depend_on_the_models_after_it() -> None:
    # Equal shares (zipf 0) and the total rate scaled with the count: m0's rate stays the same.
    few = [a for a in arrivals(MODELS[:2], 600, 3, TraceShape(zipf=0, rate=1.0)) if a.model == "m0"]
    many = [
        a for a in arrivals(MODELS[:4], 600, 3, TraceShape(zipf=0, rate=2.0)) if a.model == "m0"
    ]
    assert few and few == many


def test_the_mean_rate_and_the_zipf_shares_hold_over_many_periods() -> None:
    shape = TraceShape(rate=2.0, zipf=1.0, period=300)
    trace = arrivals(MODELS, 3 * 3600, 11, shape)
    assert len(trace) / (3 * 3600) == pytest.approx(2.0, rel=0.1)
    counts = Counter(a.model for a in trace)
    for model, share in zip(MODELS, shape.shares(len(MODELS)), strict=True):
        assert counts[model] / len(trace) == pytest.approx(share, rel=0.2), model
    assert shape.shares(3) == pytest.approx([6 / 11, 3 / 11, 2 / 11])


def test_gaps_are_bursty_at_a_high_cv_and_poisson_like_at_one() -> None:
    def cv_of(cv: float) -> float:
        shape = TraceShape(rate=1.0, cv=cv, swing=0)  # no modulation: the gaps' own spread
        g = gaps([a.at for a in arrivals(["only"], 20_000, 5, shape)])
        return statistics.pstdev(g) / statistics.mean(g)

    assert cv_of(1.0) == pytest.approx(1.0, abs=0.1)
    assert cv_of(3.0) == pytest.approx(3.0, rel=0.25)


def test_the_rate_follows_the_diurnal_swing() -> None:
    shape = TraceShape(rate=4.0, cv=1.0, period=100, swing=0.8, phase_spread=0)
    trace = arrivals(["only"], 100 * 50, 2, shape)
    # sin > 0 in the first half of each period (phase 0): the rate is above its mean there.
    peak = sum(1 for a in trace if a.at % 100 < 50)
    trough = len(trace) - peak
    expected = (1 + 0.8 * 2 / 3.14159) / (1 - 0.8 * 2 / 3.14159)  # ratio of the halves' means
    assert peak / trough == pytest.approx(expected, rel=0.15)


def test_stream_share_and_token_counts() -> None:
    trace = arrivals(MODELS, 3600, 4, TraceShape(stream_share=0.25, tokens_mean=8))
    assert sum(a.stream for a in trace) / len(trace) == pytest.approx(0.25, abs=0.03)
    assert statistics.mean(a.max_tokens for a in trace) == pytest.approx(8, rel=0.1)
    assert min(a.max_tokens for a in trace) == 1
    one = arrivals(MODELS, 60, 4, TraceShape(tokens_mean=1))
    assert {a.max_tokens for a in one} == {1}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("rate", 0, "rate must be > 0"),
        ("cv", -1, "cv must be > 0"),
        ("swing", 1.0, "swing must be in [0, 1)"),
        ("stream_share", 2, "stream_share must be in [0, 1]"),
        ("tokens_mean", 0.5, "tokens_mean must be >= 1"),
        ("period", 0, "period must be > 0"),
    ],
)
def test_a_bad_shape_is_refused_with_what_is_wrong(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace(")", r"\)")):
        TraceShape(**{field: value})


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="no models"):
        arrivals([], 10, 1, TraceShape())
    with pytest.raises(ValueError, match="repeat"):
        arrivals(["a", "a"], 10, 1, TraceShape())
    with pytest.raises(ValueError, match="seconds"):
        arrivals(["a"], 0, 1, TraceShape())
