"""A sleeping engine's residual device memory, learned from vLLM's own sleep report.

vLLM's worker logs "Sleep mode freed X GiB memory, Y GiB memory is still in use." after each
sleep; nothing else in its HTTP surface says how much memory a sleep released. A sidecar does
not see another container's output, so the model pod shares a small emptyDir: vLLM writes its
log there too through its own logging configuration (`VLLM_LOGGING_CONFIG_PATH`, a
`RotatingFileHandler` bounded by `maxBytes` x (`backupCount` + 1)), and the agent reads what
was appended during a sleep (`--vllm-log-file`), at most `MAX_READ` bytes of it.

Y is the whole device's use, neighbours included, so the residual is computed from X: the
engine's awake footprint (`--engine-memory-bytes`, the share the operator gave it) minus what
the sleep freed. Without the footprint only `freed_bytes` is reported. A sleep that had to be
asked again (the neighbour assertion) reports what the repeat freed, about nothing: such a
sleep measures nothing and the previous figures stay. docs/agent.md has the limits.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..vllm import parse_sleep_report

log = logging.getLogger(__name__)

MAX_READ = 256 << 10  # bytes read per sleep: the report is one line per worker


class ResidualMeter:
    def __init__(self, log_file: Path | None, engine_bytes: int | None) -> None:
        self._path = log_file
        self._engine_bytes = engine_bytes
        self._mark: tuple[int, int] | None = None  # (inode, size) when the sleep began
        self._reliable = True

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def mark(self) -> None:
        """Called right before the sleep call: what the log holds now is not this sleep's."""
        self._reliable = True
        if self._path is not None:
            self._mark = _stat(self._path) or (-1, 0)  # not there yet: all of it will be new

    def unreliable(self) -> None:
        self._reliable = False

    def measure(self) -> tuple[int, int | None] | None:
        """(freed_bytes, residual_bytes or None) of the sleep since `mark`, or None."""
        if self._path is None or self._mark is None or not self._reliable:
            return None
        text = self._appended(self._path, self._mark)
        report = parse_sleep_report(text)
        if report is None:
            log.warning("no sleep report in %s since the sleep began", self._path)
            return None
        residual = None
        if self._engine_bytes is not None:
            residual = max(0, self._engine_bytes - report.freed_bytes)
        return report.freed_bytes, residual

    @staticmethod
    def _appended(path: Path, mark: tuple[int, int]) -> str:
        inode, offset = mark
        now = _stat(path)
        chunks: list[bytes] = []
        if now is not None and now[0] == inode and now[1] >= offset:
            chunks.append(_read(path, offset))
        else:
            # Rotated (RotatingFileHandler renames the file to .1) or truncated meanwhile: the
            # rest of the old file, then the new one from its start.
            old = path.with_name(path.name + ".1")
            old_stat = _stat(old)
            if old_stat is not None and old_stat[0] == inode:
                chunks.append(_read(old, offset))
            if now is not None:
                chunks.append(_read(path, 0))
        return b"".join(chunks)[-MAX_READ:].decode("utf-8", "replace")


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size


def _read(path: Path, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(offset, size - MAX_READ))
            return f.read(MAX_READ)
    except OSError:
        return b""
