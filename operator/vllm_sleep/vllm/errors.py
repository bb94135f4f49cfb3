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


class VLLMTimeout(VLLMUnreachable):
    """No answer within the call's timeout (connected, then waited). vLLM may still be working
    on the call: a `/sleep?mode=wait` whose requests are still running, a slow reload."""


# What vLLM's Worker.sleep asserts when a neighbour allocated during the sleep (docs/vllm.md,
# "Shared GPUs"): the memory is released but the executor does not count itself asleep, and
# asking again completes the sleep.
MEMORY_INCREASED = "Memory usage increased after sleeping"


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

    @property
    def memory_increased(self) -> bool:
        """The sleep failed on the neighbour assertion (≥0.18 says so in the body)."""
        return MEMORY_INCREASED in self.body

    @property
    def opaque(self) -> bool:
        """A 5xx without a message: ≤0.17 answers a failed engine call with an empty or plain
        500, so the cause (the neighbour assertion among others) cannot be read."""
        text = self.body.strip()
        return self.status >= 500 and (not text or text == "Internal Server Error")


class VLLMProtocolError(VLLMError):
    """A 2xx answer whose body does not have the documented shape."""


class VLLMUnsupported(VLLMError):
    """The engine's version cannot do what was asked (e.g. level-2 reload before 0.10.2)."""
