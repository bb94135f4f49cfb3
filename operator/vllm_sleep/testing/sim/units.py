"""Byte quantities and durations as people write them ("16Gi", "80G", "1073741824")."""

from __future__ import annotations

import re

GiB = 2**30

_UNITS = {
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}
_QUANTITY = re.compile(r"\s*(\d+(?:\.\d+)?(?:[eE]\d+)?)\s*([A-Za-z]*)\s*")


def parse_bytes(text: str) -> int:
    """Kubernetes-style quantity (Gi = 2**30, G = 10**9) or a plain number of bytes."""
    m = _QUANTITY.fullmatch(text)
    if not m or m.group(2) not in _UNITS:
        raise ValueError(f"not a byte quantity: {text!r} (examples: 16Gi, 80G, 1073741824)")
    value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 0:
        raise ValueError(f"negative byte quantity: {text!r}")
    return value


def parse_token_count(text: str) -> int:
    """vLLM's human-readable --max-model-len: 4096, 8k (=8000), 8K (=8192), 1m, 1M."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise ValueError(f"not a token count: {text!r}")
    mult = {"": 1, "k": 10**3, "K": 2**10, "m": 10**6, "M": 2**20, "g": 10**9, "G": 2**30}
    return int(float(m.group(1)) * mult[m.group(2)])


def gib(n_bytes: float) -> float:
    return n_bytes / GiB
