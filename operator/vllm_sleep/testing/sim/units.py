"""Byte quantities and durations as people write them ("16Gi", "80G", "1073741824")."""

from __future__ import annotations

import re

from ...api.vllm_args import human_readable_int

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
    """A positive --max-model-len as vLLM's `human_readable_int` parses it (its rule lives in
    api.vllm_args): 4096, 8k (=8000), 8K (=8192), 1.5k; a decimal with a binary suffix (1.5K)
    is refused, as vLLM refuses it."""
    n = human_readable_int(text)
    if n is None or n < 1:
        raise ValueError(
            f"not a token count: {text!r} (e.g. 4096, 8k = 8000, 8K = 8192; "
            "no decimals with a binary suffix K, M, G, T)"
        )
    return n


def gib(n_bytes: float) -> float:
    return n_bytes / GiB
