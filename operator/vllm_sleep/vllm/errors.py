"""Typed failures of calls to vLLM, so callers branch on kind, not on exception text."""

from __future__ import annotations


class VLLMError(Exception):
    """Any failed call to vLLM. `path` is the endpoint that failed."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"vLLM {path}: {message}")
        self.path = path
        self.message = message


class VLLMUnreachable(VLLMError):
    """No HTTP answer at all: connection refused, reset or timed out (engine down or loading)."""


class VLLMHTTPError(VLLMError):
    """vLLM answered with a non-2xx status. `body` is the raw text (may be empty: ≤0.17 crashes
    answer a plain-text or empty 500)."""

    def __init__(self, path: str, status: int, body: str) -> None:
        super().__init__(path, f"HTTP {status}: {body[:300] or '(empty body)'}")
        self.status = status
        self.body = body

    @property
    def not_found(self) -> bool:
        # 404 on a dev endpoint means VLLM_SERVER_DEV_MODE is off or the version lacks the route.
        return self.status == 404


class VLLMProtocolError(VLLMError):
    """A 2xx answer whose body does not have the documented shape."""


class VLLMUnsupported(VLLMError):
    """The engine's version cannot do what was asked (e.g. level-2 reload before 0.10.2)."""
