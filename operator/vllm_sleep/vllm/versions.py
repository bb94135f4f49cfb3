"""vLLM versions and the sleep-mode behaviour that depends on them (docs/vllm.md "Versions at a glance").

Only behaviour this project acts on is listed. An unknown version (no or unparsable `/version`)
gets the conservative answer for each question: the one that is safe on every release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import overload

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


class _Since:
    """A behaviour present from one release on. An unknown version gets `unknown`: the answer
    that is safe on every release."""

    def __init__(self, major: int, minor: int, patch: int = 0, *, unknown: bool = False) -> None:
        self.release = VLLMVersion(major, minor, patch)
        self.unknown = unknown

    @overload
    def __get__(self, features: None, owner: type[Features]) -> _Since: ...
    @overload
    def __get__(self, features: Features, owner: type[Features]) -> bool: ...
    def __get__(self, features: Features | None, owner: type[Features]) -> bool | _Since:
        if features is None:
            return self
        version = features.version
        return self.unknown if version is None else version >= self.release


@dataclass(frozen=True)
class Features:
    """What one vLLM version does, as far as sleep mode is concerned: each behaviour with the
    release it appeared in."""

    version: VLLMVersion | None

    # `/sleep?mode=` exists. Older versions ignore it; ≥0.32 validate it (400).
    sleep_mode_param = _Since(0, 17)
    # `POST /collective_rpc` exists, so a level-2 wake can reload over HTTP. Unknown version:
    # assume yes and let the call fail loudly, rather than refuse level 2 on every engine whose
    # `/version` is unreadable.
    http_reload_weights = _Since(0, 10, 2, unknown=True)
    # Sleep resets the prefix cache itself; before, stale hits after a wake point at discarded
    # KV, so the caller must reset after waking.
    sleep_resets_prefix_cache = _Since(0, 10, 1)
    # Requests reaching a sleeping engine are queued rather than crash it. Informational: the
    # agent never forwards to a non-awake engine whatever the version.
    guards_requests_while_asleep = _Since(0, 17)
    # `vllm:engine_sleep_state` exists.
    sleep_state_gauge = _Since(0, 12)
    # `POST /release_kv_cache_memory` exists: the KV-only sleep tier (pause, release the KV
    # cache, and a wake that re-maps only the KV cache while the weights stay). The agent's
    # level 0 needs it.
    release_kv_cache_memory = _Since(0, 31)
    # `/sleep` and `/release_kv_cache_memory` take `reset_connector`.
    sleep_reset_connector = _Since(0, 34)
    # `/checkpoint/prepare|restore|status` exist whenever sleep mode is on: not dev-gated and
    # not behind --api-key, so they must be kept away from clients.
    checkpoint_routes = _Since(0, 34)
    # Without --gpu-memory-utilization the engine takes nearly all free device memory at start
    # and skips the startup check: always pass a share.
    extensible_kv_cache = _Since(0, 34)
    # The pinned host backup of the weights stays after a wake, from the first sleep until the
    # process exits; before, it was freed on wake. Unknown version: yes, the answer that never
    # under-counts host memory.
    backup_kept_while_awake = _Since(0, 34, unknown=True)
    # Level 2 discards a speculative-decoding draft model that reload_weights does not restore,
    # unless --sleep-preserve-parameter-names keeps it. Unknown version: yes, so a speculative
    # model is not put into level 2 unprotected.
    level2_discards_draft = _Since(0, 34, unknown=True)

    @property
    def sleep_races_running_kernels(self) -> bool:
        """0.17-0.27: a sleep can unmap memory under kernels still running (vllm#45520: no
        device sync before the unmap until 0.28 in the worker and 0.29 in the engine core), so
        the engine must be drained with a bounded `/sleep?level=0&mode=wait` first. Requests
        sent from inside the pod never pass the agent's own drain.

        Unknown version: no (the drain needs level 0, which ≤0.16 reads as "discard all").
        """
        v = self.version
        return v is not None and v.at_least(0, 17) and not v.at_least(0, 28)

    @property
    def default_gpu_memory_utilization(self) -> float | None:
        """What an unset --gpu-memory-utilization means: 0.9 up to 0.19, 0.92 from 0.20, and
        1.0 (all free memory) from 0.34. None for an unknown version."""
        if self.version is None:
            return None
        if self.version.at_least(0, 34):
            return 1.0
        return 0.92 if self.version.at_least(0, 20) else 0.9
