"""Kubernetes resource quantities ("16Gi", "500m", "1.5G", "2e9", 8) as typed values.

Same grammar as `k8s.io/apimachinery/pkg/api/resource`, so a value the apiserver's pattern admits
parses here and vice versa. The original text is kept: manifests we build show the user's
spelling ("16Gi"), while arithmetic (weights added to a memory limit) uses exact Decimals.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_NUM = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_SUFFIX = rf"(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?{_NUM})?"
# Non-negative quantities only: every quantity in this API is a size or a request.
QUANTITY_PATTERN = rf"^\+?{_NUM}{_SUFFIX}$"
_QUANTITY = re.compile(rf"\+?({_NUM})([KMGTPE]i|[numkMGTPE]|[eE][+-]?{_NUM})?")
_EXAMPLES = 'e.g. "16Gi", "500Mi", "2G", "1500m", 1073741824'


class QuantityError(ValueError):
    pass


def parse_quantity(text: str | int) -> Decimal:
    """The exact value of a quantity (bytes for memory, cores for cpu)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise QuantityError(
            f"a quantity must be a string or an integer ({_EXAMPLES}), not {text!r}"
        )
    if isinstance(text, int):
        if text < 0:
            raise QuantityError(f"quantity {text} must not be negative")
        return Decimal(text)
    s = text.strip()
    if s.startswith("-"):
        raise QuantityError(f"quantity {text!r} must not be negative")
    m = _QUANTITY.fullmatch(s)
    if m is None:
        raise QuantityError(
            f"invalid quantity {text!r}: a number with an optional suffix "
            f"(Ki Mi Gi Ti Pi Ei, n u m k M G T P E, or an exponent); {_EXAMPLES}"
        )
    number, suffix = Decimal(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * Decimal(10) ** Decimal(suffix[1:])  # exponent form: 2e9, 1.5E3


def format_quantity(value: Decimal | int) -> str:
    """A canonical spelling: the largest exact binary suffix for whole numbers, else decimal."""
    d = Decimal(value)
    if d < 0:
        raise QuantityError(f"negative quantity {value!r}")
    if d == d.to_integral_value():
        n = int(d)
        for suffix, factor in reversed(_BINARY.items()):
            if n and n % factor == 0:
                return f"{n // factor}{suffix}"
        return str(n)
    milli = d * 1000
    if milli == milli.to_integral_value():
        return f"{int(milli)}m"
    return format(d.normalize(), "f")


@dataclass(frozen=True)
class Quantity:
    """A parsed quantity that remembers how it was written."""

    text: str
    value: Decimal

    @classmethod
    def parse(cls, raw: str | int) -> Quantity:
        return cls(str(raw).strip(), parse_quantity(raw))

    @classmethod
    def of(cls, value: Decimal | int) -> Quantity:
        return cls(format_quantity(value), Decimal(value))

    def bytes(self) -> int:
        """Whole bytes, rounded up (Kubernetes rounds fractional byte quantities up too)."""
        return math.ceil(self.value)

    def __add__(self, other: Quantity) -> Quantity:
        return Quantity.of(self.value + other.value)

    def __str__(self) -> str:
        return self.text

    @classmethod
    def __get_pydantic_core_schema__(
        cls, _source: Any, _handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def validate(raw: Any) -> Quantity:
            if isinstance(raw, Quantity):
                return raw
            return cls.parse(raw)

        return core_schema.no_info_plain_validator_function(
            validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                lambda q: q.text, return_schema=core_schema.str_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, _schema: core_schema.CoreSchema, _handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        # The shape Kubernetes itself uses for resource.Quantity in CRDs.
        return {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
            # The pattern only sees strings; a bare integer is checked here.
            "x-kubernetes-validations": [
                {"rule": "type(self) != int || self >= 0", "message": "must not be negative"}
            ],
        }
