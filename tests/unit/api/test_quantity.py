"""Kubernetes quantities: same grammar as the apiserver's, exact values, canonical printing."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.quantity import (
    QUANTITY_PATTERN,
    Quantity,
    QuantityError,
    format_quantity,
    parse_quantity,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("16Gi", Decimal(16 * 2**30)),
        ("500Mi", Decimal(500 * 2**20)),
        ("1Ki", Decimal(1024)),
        ("2G", Decimal(2 * 10**9)),
        ("1500m", Decimal("1.5")),
        ("100n", Decimal("1e-7")),
        ("1.5Gi", Decimal(3 * 2**29)),
        ("2e9", Decimal(2 * 10**9)),
        ("1.5E3", Decimal(1500)),
        ("1e-3", Decimal("0.001")),
        (".5", Decimal("0.5")),
        ("7.", Decimal(7)),
        ("+4", Decimal(4)),
        (1073741824, Decimal(2**30)),
        ("0", Decimal(0)),
    ],
)
def test_parse(text: str | int, expected: Decimal) -> None:
    assert parse_quantity(text) == expected
    if isinstance(text, str):
        assert re.fullmatch(QUANTITY_PATTERN, text)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ("-1Gi", "negative"),
        (-5, "negative"),
        ("16GB", "invalid quantity"),
        ("16 Gi", "invalid quantity"),
        ("Gi", "invalid quantity"),
        ("", "invalid quantity"),
        ("1.2.3", "invalid quantity"),
        ("16gi", "invalid quantity"),
        (1.5, "string or an integer"),
        (True, "string or an integer"),
    ],
)
def test_parse_errors(raw: object, needle: str) -> None:
    with pytest.raises(QuantityError, match=needle):
        parse_quantity(raw)  # type: ignore[arg-type]
    if isinstance(raw, str):
        assert not re.fullmatch(QUANTITY_PATTERN, raw)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (1000, "1000"),
        (1024, "1Ki"),
        (24 * 2**30, "24Gi"),
        (3 * 2**29, "1536Mi"),
        (Decimal("1.5"), "1500m"),
        (Decimal("0.0001"), "0.0001"),
    ],
)
def test_format(value: Decimal | int, text: str) -> None:
    assert format_quantity(value) == text


def test_quantity_keeps_spelling_and_adds_exactly() -> None:
    q = Quantity.parse("16Gi")
    assert str(q) == "16Gi" and q.bytes() == 16 * 2**30
    assert str(q + Quantity.parse("8Gi")) == "24Gi"
    assert Quantity.parse("1.5").bytes() == 2  # fractional bytes round up


values = st.one_of(
    st.integers(min_value=0, max_value=2**70),
    st.decimals(min_value=0, max_value=10**12, places=6, allow_nan=False, allow_infinity=False),
)


@given(values)
def test_round_trip_from_value(value: Decimal | int) -> None:
    text = format_quantity(value)
    assert re.fullmatch(QUANTITY_PATTERN, text), text
    assert parse_quantity(text) == Decimal(value)


@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "m", "e3"]),
)
def test_round_trip_from_text(number: int, suffix: str) -> None:
    text = f"{number}{suffix}"
    value = parse_quantity(text)
    assert parse_quantity(format_quantity(value)) == value
