"""vLLM's logging configuration in a model pod, written by the agent before vLLM starts.

vLLM reads the JSON `logging.config.dictConfig` named by `VLLM_LOGGING_CONFIG_PATH` (and
refuses to start when that file is missing). The agent, a native sidecar, writes it into the
volume it shares with vLLM before it listens: kubelet starts vLLM only after the agent's
startup probe passes, so the file is always there first, and no ConfigMap or shell wrapper is
needed. The configuration replaces vLLM's default one, so it repeats vLLM's console handler
(stdout, INFO) and adds a bounded `RotatingFileHandler` on the agent's `--vllm-log-file`
(docs/agent.md, "Residual memory").

Only the standard library's handler and formatter classes are named: a class path inside vLLM
that moved between versions would stop vLLM from starting.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Final

# vLLM's default format with standard record attributes only (vLLM's own adds %(fileinfo)s,
# which only its formatter class fills in).
FORMAT: Final = "%(levelname)s %(asctime)s [%(filename)s:%(lineno)d] %(message)s"
DATE_FORMAT: Final = "%m-%d %H:%M:%S"  # vLLM's
# Each process of the engine (API server, engine core, one worker per GPU) opens its own
# handler on the file, so the volume holds at most about (processes + 1) x MAX_BYTES.
MAX_BYTES: Final = 1 << 20
BACKUP_COUNT: Final = 1  # the reader follows one rotation (agent/residual.py)


def logging_config(log_file: Path) -> dict[str, Any]:
    """The dictConfig: vLLM's console output unchanged, plus the bounded file for the agent."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"vllm": {"format": FORMAT, "datefmt": DATE_FORMAT}},
        "handlers": {
            "vllm": {
                "class": "logging.StreamHandler",
                "formatter": "vllm",
                "level": "INFO",
                "stream": "ext://sys.stdout",
            },
            "vllm_sleep_file": {
                "class": "logging.handlers.RotatingFileHandler",
                "formatter": "vllm",
                "level": "INFO",
                "filename": str(log_file),
                "maxBytes": MAX_BYTES,
                "backupCount": BACKUP_COUNT,
                "encoding": "utf-8",
            },
        },
        "loggers": {
            "vllm": {
                "handlers": ["vllm", "vllm_sleep_file"],
                "level": "DEBUG",
                "propagate": False,
            }
        },
    }


def write_logging_config(path: Path, log_file: Path) -> None:
    """Write the configuration atomically: a vLLM restarting meanwhile reads all or nothing
    of it, never half (the agent rewrites it on each of its own restarts)."""
    text = json.dumps(logging_config(log_file), indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # vLLM may run as another user than the agent
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
