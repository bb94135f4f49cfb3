"""What a ModelDeployment's `spec.args` (extra `vllm serve` arguments) tell about the engine.

Pure. Read as vLLM's argument parser reads them: `--flag value` or `--flag=value`, a dash or an
underscore between words, the last occurrence wins. Only an explicit flag is known here: without
it vLLM derives the value from the model's own config at start-up, which only the engine knows.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# vLLM's human-readable integers: 8k = 8000, 8K = 8192 (a binary suffix takes no decimals).
_HUMAN_INT = re.compile(r"(\d+(?:\.\d+)?)([kmgtKMGT])")
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value the last `--<flag>` in `args` gives (`flag` spelled with dashes); None when
    the flag is absent or the last one has no value."""
    names = {f"--{flag}", f"--{flag.replace('-', '_')}"}
    value: str | None = None
    for i, arg in enumerate(args):
        name, eq, inline = arg.partition("=")
        if name not in names:
            continue
        following = args[i + 1] if i + 1 < len(args) else None
        value = inline if eq else following
    return value


def human_readable_int(text: str) -> int | None:
    """An integer as vLLM's `--max-model-len` parses it (`human_readable_int`); None when it
    is not one."""
    text = text.strip()
    m = _HUMAN_INT.fullmatch(text)
    if m is not None:
        number, suffix = m.groups()
        if suffix in _DECIMAL:
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            return None  # vLLM refuses decimals with a binary suffix
        return int(number) * _BINARY[suffix]
    try:
        return int(text)
    except ValueError:
        return None


def max_model_len(args: Sequence[str]) -> int | None:
    """The context length the engine reports (`max_model_len` in its /v1/models) when
    `--max-model-len` sets it; None when the args leave it to the model's config, or ask for
    the most that fits (`-1`, `auto`), which only the engine can work out."""
    value = flag_value(args, "max-model-len")
    n = None if value is None else human_readable_int(value)
    return n if n is not None and n > 0 else None
