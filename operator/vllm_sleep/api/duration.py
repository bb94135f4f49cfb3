"""Go-style durations ("30s", "10m", "1h30m", "1.5s", "250ms") as used across Kubernetes.

The CRD validates the same grammar server-side (`DURATION_PATTERN`, and CEL's `duration()` for
comparisons), so what `kubectl apply` accepts is exactly what the operator can parse. Negative
durations are refused: every duration in this API is a timeout or an age.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal, InvalidOperation

# Nanoseconds per unit. Go accepts both micro signs (U+00B5 and U+03BC) as well as "us".
_UNIT_NS: dict[str, int] = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,
    "\u03bcs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60 * 1_000_000_000,
    "h": 3600 * 1_000_000_000,
}
_UNITS_RE = "ns|us|\u00b5s|\u03bcs|ms|s|m|h"
_NUMBER_RE = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
# Server-side pattern (OpenAPI `pattern`, ECMA-262 flavour): one or more number+unit terms.
DURATION_PATTERN = f"^(?:0|(?:{_NUMBER_RE}(?:{_UNITS_RE}))+)$"
_TERM = re.compile(f"({_NUMBER_RE})({_UNITS_RE})")
_MAX_NS = 2**63 - 1  # Go's time.Duration is int64 nanoseconds; its parser refuses longer ones
_EXAMPLES = 'e.g. "30s", "10m", "1h30m", "1.5s", "250ms"'


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    """Parse a Go duration string; sub-microsecond precision is truncated (timedelta's limit)."""
    if not isinstance(text, str):
        raise DurationError(f"a duration must be a string ({_EXAMPLES}), not {text!r}")
    s = text.strip()
    if s.startswith("-"):
        raise DurationError(f"duration {text!r} must not be negative")
    s = s.removeprefix("+")
    if s == "0":  # Go's special case: a bare zero needs no unit
        return timedelta(0)
    if not s:
        raise DurationError(f"empty duration ({_EXAMPLES})")
    total_ns = Decimal(0)
    pos = 0
    while pos < len(s):
        m = _TERM.match(s, pos)
        if m is None:
            raise DurationError(
                f"invalid duration {text!r}: expected number+unit (ns, us, ms, s, m, h) "
                f"at {s[pos:]!r}; {_EXAMPLES}"
            )
        try:
            total_ns += Decimal(m.group(1)) * _UNIT_NS[m.group(2)]
        except InvalidOperation as e:  # pragma: no cover - the regex admits only numbers
            raise DurationError(f"invalid number in duration {text!r}") from e
        pos = m.end()
    if total_ns > _MAX_NS:
        raise DurationError(f"duration {text!r} is longer than Go's limit (about 292 years)")
    return timedelta(microseconds=int(total_ns // 1000))


def format_duration(value: timedelta) -> str:
    """Shortest Go-style form without zero components: 1h30m, 90s -> 1m30s, 0.25s -> 250ms."""
    if value < timedelta(0):
        raise DurationError(f"negative duration {value!r}")
    us = value // timedelta(microseconds=1)
    if us == 0:
        return "0s"
    if us < 1_000_000:
        return f"{us // 1000}ms" if us % 1000 == 0 else f"{us}us"
    hours, rest = divmod(us, 3600 * 1_000_000)
    minutes, rest = divmod(rest, 60 * 1_000_000)
    seconds, micros = divmod(rest, 1_000_000)
    out = ""
    if hours:
        out += f"{hours}h"
    if minutes:
        out += f"{minutes}m"
    if seconds or micros:
        frac = f".{micros:06d}".rstrip("0") if micros else ""
        out += f"{seconds}{frac}s"
    return out
