"""The version-aware vLLM client (sleep mode's dev endpoints, per VLLM_CONTRACT.md)."""

from .client import SLEEP_LEVELS, SleepMode, VLLMClient, WakeTag
from .errors import (
    VLLMError,
    VLLMHTTPError,
    VLLMProtocolError,
    VLLMUnreachable,
    VLLMUnsupported,
)
from .sleep_gauge import SleepGauge, parse_sleep_gauge
from .versions import Features, VLLMVersion

__all__ = [
    "SLEEP_LEVELS",
    "Features",
    "SleepGauge",
    "SleepMode",
    "VLLMClient",
    "VLLMError",
    "VLLMHTTPError",
    "VLLMProtocolError",
    "VLLMUnreachable",
    "VLLMUnsupported",
    "VLLMVersion",
    "WakeTag",
    "parse_sleep_gauge",
]
