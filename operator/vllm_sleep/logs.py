"""Logging set-up for every `vllm-sleep` process: one format, one environment knob."""

from __future__ import annotations

import logging
import os

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(level: str | None = None) -> None:
    """`level` wins; else $VLLM_SLEEP_LOG_LEVEL; else INFO."""
    chosen = (level or os.environ.get("VLLM_SLEEP_LOG_LEVEL") or "INFO").upper()
    logging.basicConfig(level=chosen, format=FORMAT)
