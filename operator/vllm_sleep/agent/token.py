"""The control token, followed through the Secret's mounted file.

Kubernetes updates a mounted Secret by writing the new files into a fresh directory and
swapping the volume's `..data` symlink to it: the token file's path stays, the file behind it
is a new one (another inode). Every check of a bearer token first stats that path (one
syscall; control requests are a few per minute) and reads the file again when what it points
to changed, so a rotated token is accepted, and the old one refused, from the moment the
kubelet swapped the file, without a restart. A read that fails or finds an empty file keeps
the token in use (the control port never runs unauthenticated) and is logged.
"""

from __future__ import annotations

import hmac
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

_Stamp = tuple[int, int, int, int]  # (device, inode, size, mtime ns) of the file behind the path


class ControlToken:
    def __init__(self, token: str, path: str | None = None) -> None:
        self._token = token.encode()
        self._path = path
        self._stamp: _Stamp | None = None  # unknown: the first check reads the file again

    def matches(self, candidate: bytes) -> bool:
        self._follow()
        # compare_digest: the time taken must not tell an attacker how much of a guess matched.
        return hmac.compare_digest(candidate, self._token)

    def _follow(self) -> None:
        path = self._path
        if path is None:
            return
        stamp = _stamp(path)
        if stamp is None or stamp == self._stamp:
            return
        try:
            # Secret files written by hand end with a newline; never part of a token.
            token = Path(path).read_bytes().strip()
        except OSError as e:
            log.warning("control token file %s changed but cannot be read: %s", path, e)
            return
        if not token:
            log.warning("control token file %s changed to empty: keeping the current token", path)
            return
        self._stamp = stamp
        if token != self._token:
            self._token = token
            log.info("control token re-read from %s", path)


def _stamp(path: str) -> _Stamp | None:
    try:
        st = os.stat(path)  # follows the symlinks: the file the path resolves to now
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
