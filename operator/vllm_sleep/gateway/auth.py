"""Optional static API keys, one per line in a file (a mounted Secret), reloaded on change."""

from __future__ import annotations

import hmac
import logging
import os
import time

log = logging.getLogger(__name__)

RELOAD_EVERY = 5.0  # seconds between file checks: Secret mounts update in place
_BOM = b"\xef\xbb\xbf"


class ApiKeys:
    def __init__(self, path: str) -> None:
        self._path = path
        self._keys: tuple[bytes, ...] = ()
        self._stamp: tuple[int, int, int, int] | None = None  # mtime, size, inode, device
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        st = os.stat(self._path)
        # Any change of inode, size or mtime reloads: the mtime alone misses a file replaced
        # within one timestamp tick or by a copy that keeps its mtime (`cp -p`, rsync -t),
        # and a revoked key must stop working.
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)
        if stamp == self._stamp:
            return
        # Keys are the raw bytes of the file, compared with the raw bytes of the header: any
        # encoding loads (a file that is not UTF-8 is no error), a UTF-8 BOM (Windows
        # editors) is not part of the first key, and a non-ASCII key matches exactly.
        with open(self._path, "rb") as f:
            keys = [line.strip() for line in f.read().removeprefix(_BOM).splitlines()]
        self._keys = tuple(k for k in keys if k and not k.startswith(b"#"))
        self._stamp = stamp
        # No keys is not "no auth": every /v1/* request is refused (401) until keys appear.
        level = logging.INFO if self._keys else logging.WARNING
        log.log(level, "loaded %d API keys from %s", len(self._keys), self._path)

    def check(self, authorization: str | None) -> bool:
        now = time.monotonic()
        if now - self._checked > RELOAD_EVERY:
            self._checked = now
            try:
                self._load()
            except OSError as e:  # keep the last good keys while a Secret update lands
                log.warning("cannot reload API keys: %s", e)
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":  # auth schemes are case-insensitive (RFC 9110 §11.1)
            return False
        given = credentials.encode("latin-1").strip()  # the header's own bytes
        if not given:
            return False
        # Compare against every key, without an early exit, so timing says nothing.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        return ok
