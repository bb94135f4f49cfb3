"""Read the sleep level from vLLM's `vllm:engine_sleep_state` gauge (≥0.12, docs/vllm.md "Metrics").

`/is_sleeping` says *whether* an engine sleeps but not at which level; the gauge is the only
place a restarted agent can recover the level from. Pure: text in, answer out.
"""

from __future__ import annotations

from dataclasses import dataclass

GAUGE = "vllm:engine_sleep_state"


@dataclass(frozen=True)
class SleepGauge:
    """The gauge, aggregated over engines (data parallel has one series per engine).

    awake: every engine reports awake=1.
    level: 2 if any engine discarded everything, else 1 if any offloaded weights, else 0 when
    asleep without either (level-0 sleep or released KV memory); None when awake.
    """

    awake: bool
    level: int | None


def parse_sleep_gauge(text: str) -> SleepGauge | None:
    """Return the sleep state in a Prometheus text exposition, or None if the gauge is absent.

    A hand-rolled line scan rather than a full parser: the exposition of a busy engine is long,
    only one family matters, and a malformed line elsewhere must not hide it.
    """
    engines: dict[str, dict[str, float]] = {}
    for line in text.splitlines():
        if not line.startswith(GAUGE + "{"):
            continue
        labels, value = _split_sample(line[len(GAUGE) :])
        if labels is None or value is None:
            continue
        state = labels.get("sleep_state")
        if state is None:
            continue
        engines.setdefault(labels.get("engine", ""), {})[state] = value
    if not engines:
        return None
    if any(s.get("discard_all", 0) >= 1 for s in engines.values()):
        return SleepGauge(awake=False, level=2)
    if any(s.get("weights_offloaded", 0) >= 1 for s in engines.values()):
        return SleepGauge(awake=False, level=1)
    if all(s.get("awake", 0) >= 1 for s in engines.values()):
        return SleepGauge(awake=True, level=None)
    return SleepGauge(awake=False, level=0)


def _split_sample(rest: str) -> tuple[dict[str, str] | None, float | None]:
    """'{a="x",b="y"} 1.0 [ts]' -> ({'a': 'x', 'b': 'y'}, 1.0)."""
    end = rest.find("}")
    if not rest.startswith("{") or end < 0:
        return None, None
    labels: dict[str, str] = {}
    for part in _label_pairs(rest[1:end]):
        name, eq, raw = part.partition("=")
        if not eq:
            return None, None
        labels[name.strip()] = raw.strip().strip('"')
    fields = rest[end + 1 :].split()
    if not fields:
        return labels, None
    try:
        return labels, float(fields[0])
    except ValueError:
        return labels, None


def _label_pairs(body: str) -> list[str]:
    # Split on commas outside quotes; label values here are plain words, but model names
    # (`model_name`) may contain commas.
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    escaped = False
    for ch in body:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == '"':
            quoted = not quoted
            current.append(ch)
        elif ch == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current))
    return parts
