"""vLLM's sleep report, read from its log (docs/vllm.md, "Residual of a sleeping engine"). Pure.

After every successful memory-releasing sleep each worker logs "Sleep mode freed X GiB memory,
Y GiB memory is still in use." X is the change of the device's free memory across the sleep:
what this worker released, as long as no neighbour changed memory meanwhile (one transition per
device at a time; a neighbour allocating trips the sleep's assertion instead). Y is the whole
device's use, neighbours included, so it is not this engine's residual. Figures have two
decimals: ±5 MiB.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GiB = 1 << 30
_LINE = re.compile(
    r"Sleep mode freed (\d+(?:\.\d+)?) GiB memory, (\d+(?:\.\d+)?) GiB memory is still in use\."
)


@dataclass(frozen=True)
class SleepReport:
    freed_bytes: int  # summed over the workers' lines (tensor parallel: one line per rank)
    in_use_bytes: int  # the largest device-wide figure among them (neighbours included)
    lines: int


def parse_sleep_report(text: str) -> SleepReport | None:
    """The report of the lines in `text` (one sleep's worth of log); None when there is none."""
    found = [(float(m.group(1)), float(m.group(2))) for m in _LINE.finditer(text)]
    if not found:
        return None
    return SleepReport(
        freed_bytes=round(sum(x for x, _ in found) * GiB),
        in_use_bytes=round(max(y for _, y in found) * GiB),
        lines=len(found),
    )
