"""Go-style durations: the grammar the CRD pattern admits, parsed exactly, printed canonically."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.duration import DURATION_PATTERN, DurationError, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", timedelta(0)),
        ("0s", timedelta(0)),
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("1.5s", timedelta(seconds=1.5)),
        (".5s", timedelta(milliseconds=500)),
        ("250ms", timedelta(milliseconds=250)),
        ("1m30s500ms", timedelta(minutes=1, seconds=30, milliseconds=500)),
        ("2h0m0s", timedelta(hours=2)),
        ("100us", timedelta(microseconds=100)),
        ("100\u00b5s", timedelta(microseconds=100)),
        ("1500ns", timedelta(microseconds=1)),  # truncated to timedelta's resolution
        ("+5s", timedelta(seconds=5)),
        ("72h", timedelta(days=3)),
    ],
)
def test_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("-5s", "negative"),
        ("", "empty"),
        ("10", "expected number"),
        ("10 m", "expected number"),
        ("1d", "expected number"),
        ("PT10M", "expected number"),
        ("m", "expected number"),
        ("1h-5m", "expected number"),
    ],
)
def test_parse_errors_say_what_is_wrong(text: str, needle: str) -> None:
    with pytest.raises(DurationError, match=needle):
        parse_duration(text)


def test_non_string_is_refused() -> None:
    with pytest.raises(DurationError, match="must be a string"):
        parse_duration(600)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(minutes=10), "10m"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(milliseconds=250), "250ms"),
        (timedelta(seconds=1.5), "1.5s"),
        (timedelta(microseconds=7), "7us"),
        (timedelta(days=2), "48h"),
    ],
)
def test_format(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=400))


@given(durations)
def test_round_trip_from_value(value: timedelta) -> None:
    text = format_duration(value)
    assert re.fullmatch(DURATION_PATTERN, text), text
    assert parse_duration(text) == value


terms = st.tuples(
    st.integers(min_value=0, max_value=10_000), st.sampled_from(["h", "m", "s", "ms", "us"])
)


@given(st.lists(terms, min_size=1, max_size=4))
def test_round_trip_from_text(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    assert re.fullmatch(DURATION_PATTERN, text), text
    value = parse_duration(text)
    assert parse_duration(format_duration(value)) == value


def test_longer_than_go_allows_is_a_duration_error_not_an_overflow() -> None:
    # Go's parser refuses durations past int64 nanoseconds; the pattern admits the text, so
    # the parser must answer with the validation error pydantic turns into a ValidationError.
    assert parse_duration("2562047h") == timedelta(hours=2562047)
    with pytest.raises(DurationError):
        parse_duration("99999999999999h")
