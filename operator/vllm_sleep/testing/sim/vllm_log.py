"""vLLM's log file, when its logging configuration names one (`VLLM_LOGGING_CONFIG_PATH`).

vLLM applies the JSON `logging.config.dictConfig` that variable names (with
`VLLM_CONFIGURE_LOGGING` not 0). A pod uses it to put vLLM's log into a volume its agent can
read (docs/agent.md, "Residual memory"). The simulator runs many engines in one process, so it
does not apply the configuration globally: it builds the file handlers the configuration names
(`logging.FileHandler`, `logging.handlers.RotatingFileHandler` with `maxBytes`/`backupCount`,
`logging.handlers.WatchedFileHandler`) for this engine only and writes this engine's vLLM lines
to them, rotation included. Other handlers and loggers are vLLM's business, not simulated.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
from collections.abc import Mapping
from pathlib import Path

FORMAT = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"  # vLLM's default
_FILE_CLASSES = {
    "logging.FileHandler",
    "logging.handlers.RotatingFileHandler",
    "logging.handlers.WatchedFileHandler",
}


class VLLMLogFile:
    def __init__(self, handlers: list[logging.Handler]) -> None:
        self._handlers = handlers

    @staticmethod
    def config_path(env: Mapping[str, str]) -> str | None:
        """The configuration vLLM would apply, from its environment."""
        if env.get("VLLM_CONFIGURE_LOGGING", "1") == "0":
            return None
        return env.get("VLLM_LOGGING_CONFIG_PATH") or None

    @classmethod
    def from_config(cls, path: str | None) -> VLLMLogFile:
        if path is None:
            return cls([])
        try:
            config = json.loads(Path(path).read_text())
        except (OSError, ValueError) as e:
            # vLLM refuses to start on a missing or malformed file.
            raise ValueError(f"VLLM_LOGGING_CONFIG_PATH {path}: {e}") from e
        handlers: list[logging.Handler] = []
        for spec in (config.get("handlers") or {}).values():
            if not isinstance(spec, dict) or spec.get("class") not in _FILE_CLASSES:
                continue
            filename = str(spec["filename"])
            Path(filename).parent.mkdir(parents=True, exist_ok=True)
            handler: logging.Handler
            if spec["class"] == "logging.handlers.RotatingFileHandler":
                handler = logging.handlers.RotatingFileHandler(
                    filename,
                    maxBytes=int(spec.get("maxBytes", 0)),
                    backupCount=int(spec.get("backupCount", 0)),
                    encoding="utf-8",
                )
            else:
                handler = logging.FileHandler(filename, encoding="utf-8")
            handler.setFormatter(logging.Formatter(FORMAT))
            handlers.append(handler)
        return cls(handlers)

    def info(self, message: str, *, source: str = "gpu_worker.py") -> None:
        record = logging.LogRecord("vllm", logging.INFO, source, 0, message, None, None)
        for h in self._handlers:
            h.handle(record)

    def close(self) -> None:
        for h in self._handlers:
            h.close()
        self._handlers = []
