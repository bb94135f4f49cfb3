"""The demo's timeline maths: bands, swaps, the summary, the traffic schedule and the PNG."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from vllm_sleep.demo.plot import NoMatplotlib, write_png
from vllm_sleep.demo.record import DeviceView, committed
from vllm_sleep.demo.timeline import (
    Engine,
    Request,
    Sample,
    Timeline,
    band,
    summarize,
    swaps,
    waited_for_swap,
)
from vllm_sleep.demo.traffic import schedule
from vllm_sleep.demo.view import BAR_WIDTH, device_text, engine_words, memory_bar

GiB = 2**30


def test_band_trusts_the_engine_for_awake_and_asleep_and_the_status_for_what_comes_next() -> None:
    awake, asleep = Engine("awake"), Engine("sleeping")
    assert band("Awake", awake) == "awake"
    assert band("Asleep", awake) == "awake"  # the status lags the wake by a write
    assert band("Awake", asleep) == "asleep"  # ... and the eviction
    assert band("Draining", awake) == "sleeping"  # drained before the engine's sleep
    assert band("Waking", asleep) == "waking"  # the agent is about to wake it
    assert band("Loading", awake) == "loading"  # loaded, pre-warm sleep next
    assert band("Awake", Engine("awake", transition="sleep")) == "sleeping"
    assert band("Asleep", Engine("sleeping", transition="wake")) == "waking"
    assert band("Loading", Engine("loading", transition="startup")) == "loading"
    assert band("Asleep", None) == "asleep"  # engine not reachable: the status says
    assert band(None, None) == "absent"
    assert band("Awake", Engine("dead")) == "awake"


def timeline(*rows: tuple[float, dict[str, str]]) -> Timeline:
    tl = Timeline(("a", "b", "c"), 80 * GiB)
    for at, bands in rows:
        tl.add(Sample(at, {"a": "asleep", "b": "asleep", "c": "asleep", **bands}))
    return tl


def test_intervals_and_band_at() -> None:
    tl = timeline((0, {"a": "awake"}), (1, {"a": "awake"}), (2, {"a": "sleeping"}), (3, {}))
    assert [(i.band, i.start, i.end) for i in tl.intervals("a")] == [
        ("awake", 0, 2),
        ("sleeping", 2, 3),
        ("asleep", 3, 3),
    ]
    assert tl.band_at("a", 1.5) == "awake" and tl.band_at("a", 2.9) == "sleeping"
    assert tl.band_at("a", -1) == "absent"
    with pytest.raises(ValueError):
        tl.add(Sample(2.5, {}))


def swap_timeline() -> Timeline:
    """a awake, a request for b evicts it, b awake; later c the same way from b."""
    tl = Timeline(("a", "b", "c"), 80 * GiB)
    rows = [
        (0.0, "awake", "asleep", "asleep"),
        (1.0, "awake", "asleep", "asleep"),
        (2.0, "sleeping", "asleep", "asleep"),
        (2.5, "asleep", "waking", "asleep"),
        (3.0, "asleep", "awake", "asleep"),
        (5.0, "asleep", "awake", "asleep"),
        (5.5, "asleep", "sleeping", "asleep"),
        (6.0, "asleep", "asleep", "awake"),
        (8.0, "asleep", "asleep", "awake"),
    ]
    for at, a, b, c in rows:
        tl.add(
            Sample(
                at,
                {"a": a, "b": b, "c": c},
                held={
                    m: 48 * GiB if s == "awake" else int(1.4 * GiB)
                    for m, s in zip("abc", (a, b, c), strict=True)
                },
                used_bytes=int(50.8 * GiB),
                # a's pre-warm sleep (0.9 s) until its eviction's sleep is written
                last_sleep={"a": 0.3 if at >= 2.5 else 0.9},
                last_wake={"b": 0.1} if at >= 3.0 else {},
            )
        )
    return tl


REQUESTS = [
    Request("a", 0.5, 0.55, 0.6, 200),  # a awake: served at once
    Request("b", 1.5, 3.1, 3.2, 200),  # waited for a -> b
    Request("b", 1.8, 3.1, 3.3, 200),  # also held for the same swap
    Request("b", 4.0, 4.05, 4.1, 200),  # b awake
    Request("c", 5.2, 6.1, 6.2, 200),  # waited for b -> c
]


def test_swaps_pair_each_eviction_with_the_wake_a_held_request_waited_for() -> None:
    found = swaps(swap_timeline(), REQUESTS)
    assert [(s.evicted, s.woken, s.evicted_at, s.awake_at) for s in found] == [
        ("a", "b", 2.0, 3.0),
        ("b", "c", 5.5, 6.0),
    ]
    first = found[0]
    assert first.request is REQUESTS[1]  # the earliest that waited
    assert first.ttft == pytest.approx(1.6)
    assert first.engine_seconds == pytest.approx(0.4)  # a's sleep 0.3 + b's wake 0.1
    assert found[1].engine_seconds is None  # c's wake not reported yet
    assert [waited_for_swap(r, found) for r in REQUESTS] == [False, True, True, False, True]


def test_an_idle_sleep_then_a_wake_is_not_a_swap() -> None:
    tl = Timeline(("a", "b"), 80 * GiB)
    for at, a, b in [(0, "awake", "asleep"), (2, "asleep", "asleep"), (9, "asleep", "awake")]:
        tl.add(Sample(at, {"a": a, "b": b}))
    late = [Request("b", 8.0, 9.1, 9.2, 200)]  # sent after a had gone to sleep on its own
    assert swaps(tl, late) == []


def test_two_models_awake_together_is_not_a_swap() -> None:
    tl = Timeline(("a", "b"), 80 * GiB)
    for at, a, b in [(0, "awake", "asleep"), (1, "awake", "awake"), (5, "awake", "awake")]:
        tl.add(Sample(at, {"a": a, "b": b}))
    assert swaps(tl, [Request("b", 0.5, 1.1, 1.2, 200)]) == []


def test_summary_counts_swaps_waits_and_violations_by_kind() -> None:
    violations = [
        {"kind": "request_while_asleep"},
        {"kind": "wake_oom"},
        {"kind": "profiling_race"},
    ]
    failed = Request("a", 7.0, None, 7.1, 503, "no")
    summary, found = summarize(swap_timeline(), [*REQUESTS, failed], violations)
    assert len(found) == summary.swaps == 2
    assert summary.requests == 6 and summary.succeeded == 5
    assert summary.waited == 3
    assert summary.ttft_swap_p50 == pytest.approx(1.3)  # 1.6, 1.3, 0.9
    assert summary.ttft_swap_max == pytest.approx(1.6)
    assert summary.ttft_warm_p50 == pytest.approx(0.05)  # the two requests to an awake model
    assert summary.engine_p50 == pytest.approx(0.4)
    assert summary.peak_used_bytes == int(50.8 * GiB)
    assert (summary.violations, summary.ooms, summary.to_sleeping) == (3, 1, 1)
    assert summary.max_awake == 1


def test_schedule_hops_between_models_in_bursts_and_is_seeded() -> None:
    models = ("a", "b", "c")
    plan = schedule(models, seconds=30, rate=2, seed=3)
    assert plan == schedule(models, seconds=30, rate=2, seed=3)
    assert plan != schedule(models, seconds=30, rate=2, seed=4)
    offsets = [at for at, _ in plan]
    assert offsets == sorted(offsets) and all(0 <= at < 30 for at in offsets)
    assert 30 <= len(plan) <= 90  # about 2 a second
    runs: list[int] = []
    for i, (_, m) in enumerate(plan):
        if i and plan[i - 1][1] == m:
            runs[-1] += 1
        else:
            runs.append(1)
    assert max(runs) <= 3 and len(runs) > len(plan) / 3  # bursts of 1-3, then another model
    assert {m for _, m in plan} == set(models)
    with pytest.raises(ValueError):
        schedule(("a",), 10, 1)
    with pytest.raises(ValueError):
        schedule(models, 0, 1)


def test_committed_bytes_sum_the_pools_devices() -> None:
    pool = {"status": {"deviceStates": [{"committedBytes": 5}, {"committedBytes": 7}, {}]}}
    assert committed(pool) == 12
    assert committed({"status": {}}) is None and committed(None) is None


def test_memory_bar_and_device_line() -> None:
    bar = memory_bar({"a": 40 * GiB, "b": 20 * GiB}, ("a", "b"), 80 * GiB)
    assert len(bar.plain) == BAR_WIDTH
    assert bar.plain.count("█") == round(BAR_WIDTH * 0.75)
    over = memory_bar({"a": 80 * GiB, "b": 80 * GiB}, ("a", "b"), 80 * GiB)
    assert len(over.plain) == BAR_WIDTH  # never wider than the device
    view = DeviceView(80 * GiB, used_bytes=50 * GiB, committed_bytes=52 * GiB, held={"a": 48 * GiB})
    text = device_text(view, ("a", "b")).plain
    assert "50.0 / 80 GiB used" in text and "52.0 GiB committed" in text
    assert "a 48.0 GiB" in text and "b 0.0 GiB (not started)" in text
    assert engine_words(Engine("sleeping")) == "asleep"
    assert engine_words(Engine("awake", transition="sleep")) == "going to sleep"
    assert engine_words(Engine("loading", transition="startup")) == "loading"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


def test_write_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    tl = swap_timeline()
    tl.mark(0.0, "swaps")
    found = swaps(tl, REQUESTS)
    path = write_png(tl, REQUESTS, found, tmp_path / "sub" / "t.png")
    assert path.stat().st_size > 10_000
    assert png_size(path) == (1430, 715)


def test_without_matplotlib_the_message_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    with pytest.raises(NoMatplotlib, match="pip install"):
        write_png(swap_timeline(), [], [], tmp_path / "t.png")
    assert not (tmp_path / "t.png").exists()
