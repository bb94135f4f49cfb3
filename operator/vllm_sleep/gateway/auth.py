"""Optional static API keys, one per line in a file (a mounted Secret), reloaded on change."""

from __future__ import annotations

import hmac
import logging
import os
import time

log = logging.getLogger(__name__)

RELOAD_EVERY = 5.0  # seconds between mtime checks: Secret mounts update in place


class ApiKeys:
    def __init__(self, path: str) -> None:
        self._path = path
        self._keys: tuple[bytes, ...] = ()
        self._mtime: float | None = None
        self._checked = 0.0
        self._load()

    def _load(self) -> None:
        mtime = os.stat(self._path).st_mtime
        if mtime == self._mtime:
            return
        with open(self._path, encoding="utf-8") as f:
            keys = [line.strip() for line in f]
        self._keys = tuple(k.encode() for k in keys if k and not k.startswith("#"))
        self._mtime = mtime
        log.info("loaded %d API keys from %s", len(self._keys), self._path)

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
        given = credentials.strip().encode()
        if not given:
            return False
        # Compare against every key, without an early exit, so timing says nothing.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(given, key)
        return ok
