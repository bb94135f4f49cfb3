"""Byte quantities on the command line ("80Gi", "16G", "1073741824")."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def parse_bytes(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kMGT]i?)?\s*", text)
    if not m:
        raise ValueError(f"not a byte quantity: {text!r} (examples: 80Gi, 16G, 1073741824)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])
