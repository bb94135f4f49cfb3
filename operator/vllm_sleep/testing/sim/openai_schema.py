"""Validation of /v1/chat/completions and /v1/completions bodies, with vLLM's 400/404 errors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .config import SimConfig
from .generation import count_tokens


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.param = param
        self.status = status


@dataclass(frozen=True)
class Completion:
    chat: bool
    model: str
    prompt_text: str
    prompt_tokens: int
    max_tokens: int
    stream: bool
    include_usage: bool


def _int_field(body: dict[str, Any], name: str, minimum: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise BadRequest(f"{name} must be an integer, got {v!r}", name)
    if v < minimum:
        raise BadRequest(f"{name} must be at least {minimum}, got {v}", name)
    return v


def _prompt_text(body: dict[str, Any], chat: bool) -> str:
    if chat:
        msgs = body.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise BadRequest("messages must be a non-empty list", "messages")
        parts = []
        for m in msgs:
            if not isinstance(m, dict) or "role" not in m:
                raise BadRequest("each message must be an object with a role", "messages")
            content = m.get("content")
            if isinstance(content, list):  # multi-part content: keep the text parts
                content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            parts.append(f"{m['role']}: {content or ''}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        return " ".join(map(str, prompt))
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and len(prompt) > 1:
        raise BadRequest("the simulator supports one prompt per request", "prompt")
    raise BadRequest("prompt must be a string or a list of token ids", "prompt")


def parse_completion(body: Any, cfg: SimConfig, *, chat: bool) -> Completion:
    if not isinstance(body, dict):
        raise BadRequest("Request body must be a JSON object")
    model = body.get("model") or cfg.served_names[0]
    if model not in cfg.served_names:
        raise BadRequest(f"The model `{model}` does not exist.", "model", 404)
    n = _int_field(body, "n", 1)
    if n not in (None, 1):
        raise BadRequest("the simulator supports n=1 only", "n")
    max_tokens = _int_field(body, "max_completion_tokens", 1) if chat else None
    max_tokens = max_tokens or _int_field(body, "max_tokens", 1)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise BadRequest("stream must be a boolean", "stream")
    opts = body.get("stream_options")
    if opts is not None and not stream:
        raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
    if opts is not None and not isinstance(opts, dict):
        raise BadRequest("stream_options must be an object", "stream_options")
    text = _prompt_text(body, chat)
    prompt_tokens = count_tokens(text)
    limit = cfg.max_model_len
    if prompt_tokens + (max_tokens or 0) > limit or prompt_tokens >= limit:
        raise BadRequest(
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt_tokens + (max_tokens or 0)} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens or 0} in the completion). Please reduce the length of the messages or completion.",
            "messages" if chat else "prompt",
        )
    budget = limit - prompt_tokens
    return Completion(
        chat=chat,
        model=model,
        prompt_text=text,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens or min(cfg.default_max_tokens, budget),
        stream=stream,
        include_usage=bool((opts or {}).get("include_usage")),
    )
