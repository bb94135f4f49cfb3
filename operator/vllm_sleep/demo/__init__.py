"""`vllm-sleep demo`: see `main.py`. `cli.py` calls `vllm_sleep.demo.main(argv) -> int`."""

from __future__ import annotations

from .main import main

__all__ = ["main"]
