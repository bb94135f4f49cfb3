"""vLLM versions and the sleep-mode behaviour that depends on them (VLLM_CONTRACT.md timeline).

Only behaviour this project acts on is listed. An unknown version (no or unparsable `/version`)
gets the conservative answer for each question: the one that is safe on every release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_VERSION = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class VLLMVersion:
    major: int
    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str) -> VLLMVersion | None:
        """'0.10.2', 'v0.11.0rc1', '0.10.2.dev123+gabc' -> version; anything else -> None.

        A pre-release of X counts as X: the feature gates below are on minor releases, and a
        dev build of 0.17 already has 0.17's sleep code.
        """
        m = _VERSION.match(text)
        if not m:
            return None
        return cls(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def at_least(self, major: int, minor: int, patch: int = 0) -> bool:
        return (self.major, self.minor, self.patch) >= (major, minor, patch)


@dataclass(frozen=True)
class Features:
    """What one vLLM version does, as far as sleep mode is concerned."""

    version: VLLMVersion | None

    @property
    def sleep_mode_param(self) -> bool:
        """`/sleep?mode=` exists (0.17). Older versions ignore it; ≥0.32 validate it (400)."""
        return self.version is not None and self.version.at_least(0, 17)

    @property
    def http_reload_weights(self) -> bool:
        """`POST /collective_rpc` exists (0.10.2), so a level-2 wake can reload over HTTP.

        Unknown version: assume yes and let the call fail loudly, rather than refuse level 2
        on every engine whose `/version` is unreadable.
        """
        return self.version is None or self.version.at_least(0, 10, 2)

    @property
    def sleep_resets_prefix_cache(self) -> bool:
        """Sleep resets the prefix cache itself (0.10.1); before, stale hits after a wake point
        at discarded KV, so the caller must reset after waking."""
        return self.version is not None and self.version.at_least(0, 10, 1)

    @property
    def guards_requests_while_asleep(self) -> bool:
        """Requests reaching a sleeping engine are queued rather than crash it (0.17).

        Informational: the agent never forwards to a non-awake engine whatever the version.
        """
        return self.version is not None and self.version.at_least(0, 17)

    @property
    def sleep_state_gauge(self) -> bool:
        """`vllm:engine_sleep_state` exists (0.12)."""
        return self.version is not None and self.version.at_least(0, 12)
