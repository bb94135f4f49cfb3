"""The version-aware vLLM client (sleep mode's dev endpoints, per docs/vllm.md)."""

from .client import SLEEP_LEVELS, SleepMode, VLLMClient, WakeTag
from .errors import (
    VLLMError,
    VLLMHTTPError,
    VLLMProtocolError,
    VLLMTimeout,
    VLLMUnreachable,
    VLLMUnsupported,
)
from .sleep_gauge import SleepGauge, parse_sleep_gauge
from .sleep_log import SleepReport, parse_sleep_report
from .versions import Features, VLLMVersion

__all__ = [
    "SLEEP_LEVELS",
    "Features",
    "SleepGauge",
    "SleepMode",
    "SleepReport",
    "VLLMClient",
    "VLLMError",
    "VLLMHTTPError",
    "VLLMProtocolError",
    "VLLMTimeout",
    "VLLMUnreachable",
    "VLLMUnsupported",
    "VLLMVersion",
    "WakeTag",
    "parse_sleep_gauge",
    "parse_sleep_report",
]
