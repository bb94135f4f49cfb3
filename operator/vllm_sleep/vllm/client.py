"""The version-aware vLLM client: health, sleep, wake, reload, as docs/vllm.md prescribes.

Rules from docs/vllm.md, applied to every call:
- `level`, `mode` and `tags` go in the query string (tags as a repeated key); no version reads a
  body on `/sleep` or `/wake_up`.
- Response bodies of `/sleep`, `/wake_up` and `/reset_prefix_cache` are ignored: ≤0.31 answers
  an empty 200. The caller confirms with `is_sleeping()`.
- `/health` is liveness only: it is 200 while asleep.
- `/sleep`, `/wake_up` and `/collective_rpc` get a long timeout (a first level-1 sleep of a large
  model takes ~45 s, a level-2 reload reads the weights from disk).

`mode` is sent only to engines known to be ≥0.17. Older engines ignore it, but ≥0.32 validate
it, and a version we cannot read might be anything: not sending it is the safe choice, and
callers of this project drain before sleeping, so the mode has nothing to act on anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from .errors import (
    VLLMHTTPError,
    VLLMProtocolError,
    VLLMTimeout,
    VLLMUnreachable,
    VLLMUnsupported,
)
from .sleep_gauge import SleepGauge, parse_sleep_gauge
from .transport import Answer, H1Transport, HttpxTransport, Params, Transport
from .versions import Features, VLLMVersion

SleepMode = Literal["abort", "wait", "keep"]
WakeTag = Literal["weights", "kv_cache", "scheduling"]
SLEEP_LEVELS = (0, 1, 2)

DEFAULT_TIMEOUT = 10.0
DEFAULT_TRANSITION_TIMEOUT = 900.0


class VLLMClient:
    """One vLLM API server at a plain `http://` base URL, over keep-alive HTTP/1.1
    (`transport.H1Transport`), or through the given `http` client (tests; other schemes).
    Not tied to an event loop until the first call."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        transition_timeout: float = DEFAULT_TRANSITION_TIMEOUT,
        connect_timeout: float = 2.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._long = transition_timeout
        # Neither path reads proxy settings from the environment (h1 has none; an injected
        # httpx client is the caller's): a cluster-wide HTTP(S)_PROXY must never capture
        # pod-local traffic.
        self._transport: Transport = (
            H1Transport(base_url, connect_timeout=connect_timeout)
            if http is None
            else HttpxTransport(http, base_url, connect_timeout=connect_timeout)
        )
        self._version: VLLMVersion | None = None
        self._version_known = False

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> VLLMClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- information -------------------------------------------------------------------------

    async def version(self, *, refresh: bool = False) -> VLLMVersion | None:
        """The engine's version from `GET /version`; None when unreadable. Cached once known."""
        if self._version_known and not refresh:
            return self._version
        try:
            data = (await self._call("GET", "/version")).json()
        except VLLMHTTPError as e:
            # A 404 is permanent for this process; anything else may pass, so ask again later.
            self._version_known = e.not_found
            return None  # unknown: callers fall back to the safe behaviour
        except ValueError:
            data = None
        raw = data.get("version") if isinstance(data, dict) else None
        self._version = VLLMVersion.parse(raw) if isinstance(raw, str) else None
        self._version_known = True
        return self._version

    async def features(self) -> Features:
        return Features(await self.version())

    def forget_version(self) -> None:
        """Drop the cached version (the engine process was restarted, maybe with a new image)."""
        self._version, self._version_known = None, False

    async def health(self) -> bool:
        """Liveness: True iff `/health` answers 200. Never raises. Says nothing about sleep."""
        try:
            await self._call("GET", "/health")
        except (VLLMUnreachable, VLLMHTTPError):
            return False
        return True

    async def is_sleeping(self) -> bool:
        """`GET /is_sleeping` -> bool. True also for a paused scheduler (level 0, `/pause`)."""
        resp = await self._call("GET", "/is_sleeping")
        value = _json_field(resp, "/is_sleeping", "is_sleeping")
        if not isinstance(value, bool):
            raise VLLMProtocolError("/is_sleeping", f"expected a bool, got {value!r}")
        return value

    async def metrics_text(self) -> str:
        return (await self._call("GET", "/metrics")).text

    async def sleep_state_from_metrics(self) -> SleepGauge | None:
        """The level from `vllm:engine_sleep_state`; None before 0.12 or when unreadable."""
        try:
            return parse_sleep_gauge(await self.metrics_text())
        except (VLLMHTTPError, VLLMUnreachable):
            return None

    # -- transitions -------------------------------------------------------------------------

    async def sleep(self, level: int, mode: SleepMode | None = None) -> None:
        """`POST /sleep?level=N[&mode=M]`; returns when vLLM answered 2xx (memory released)."""
        if level not in SLEEP_LEVELS:
            raise ValueError(f"sleep level must be one of {SLEEP_LEVELS}, got {level!r}")
        features = await self.features()
        if level == 0 and not features.sleep_mode_param:
            # ≤0.16 sends level 0 to the worker unchecked, which discards everything.
            raise VLLMUnsupported(
                "/sleep", f"level 0 needs vLLM ≥0.17 (engine: {features.version})"
            )
        params: list[tuple[str, str]] = [("level", str(level))]
        if mode is not None and features.sleep_mode_param:
            params.append(("mode", mode))
        await self._call("POST", "/sleep", params=params, timeout=self._long)

    async def drain(self, bound: float) -> bool:
        """Pause scheduling and wait for running requests: `POST /sleep?level=0&mode=wait`
        (≥0.17), which queues new requests and frees no memory. True once vLLM answered (nothing
        runs any more); False when requests still ran after `bound` seconds. vLLM keeps waiting
        on its side: the caller resumes it with `wake_up(["scheduling"])` or sleeps deeper."""
        features = await self.features()
        if not features.sleep_mode_param:
            raise VLLMUnsupported(
                "/sleep", f"a drain needs vLLM ≥0.17 (engine: {features.version})"
            )
        try:
            await self._call(
                "POST", "/sleep", params=[("level", "0"), ("mode", "wait")], timeout=bound
            )
        except VLLMTimeout:
            return False
        return True

    async def release_kv_cache_memory(self) -> None:
        """`POST /release_kv_cache_memory` (≥0.31): after a level-0 pause, unmap the KV cache and
        keep the weights. A later `/wake_up` maps it again."""
        features = await self.features()
        if not features.release_kv_cache_memory:
            raise VLLMUnsupported(
                "/release_kv_cache_memory",
                f"the KV-only tier needs vLLM ≥0.31 (engine: {features.version})",
            )
        await self._call("POST", "/release_kv_cache_memory", timeout=self._long)

    async def wake_up(self, tags: Sequence[WakeTag] | None = None) -> None:
        """`POST /wake_up[?tags=a&tags=b]`; no tags wakes everything.

        vLLM answers 200 even when a tag is not asleep (nothing happens), so success here does
        not mean awake: confirm with `is_sleeping()`.
        """
        params: list[tuple[str, str]] = [("tags", str(t)) for t in tags or ()]
        await self._call("POST", "/wake_up", params=params, timeout=self._long)

    async def reload_weights(self) -> None:
        """`POST /collective_rpc {"method": "reload_weights"}`: step 2 of a level-2 wake."""
        features = await self.features()
        if not features.http_reload_weights:
            raise VLLMUnsupported(
                "/collective_rpc",
                f"reloading weights over HTTP needs vLLM ≥0.10.2 (engine: {features.version})",
            )
        await self._call(
            "POST", "/collective_rpc", json={"method": "reload_weights"}, timeout=self._long
        )

    async def reset_prefix_cache(self) -> None:
        await self._call("POST", "/reset_prefix_cache")

    # -- plumbing ----------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json: Any = None,
        timeout: float | None = None,
    ) -> Answer:
        """One call; VLLMUnreachable / VLLMTimeout from the transport, VLLMHTTPError (with
        the body) for a non-2xx answer."""
        resp = await self._transport.request(
            method, path, params, json, self._timeout if timeout is None else timeout
        )
        if not 200 <= resp.status < 300:
            raise VLLMHTTPError(path, resp.status, resp.text)
        return resp


def _json_field(resp: Answer, path: str, field: str) -> Any:
    try:
        data = resp.json()
    except ValueError as e:
        raise VLLMProtocolError(path, f"not JSON: {resp.text[:200]!r}") from e
    if not isinstance(data, dict) or field not in data:
        raise VLLMProtocolError(path, f"no {field!r} in {str(data)[:200]}")
    return data[field]
