"""AgentConfig: every setting of one agent, from code (the sim-kubelet) or the command line."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import NoReturn, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from ..api.names import CONTROL_PORT, ENV_CONTROL_TOKEN, PUBLIC_PORT, VLLM_PORT


class AgentConfigError(ValueError):
    """Bad arguments, environment or token: the agent refuses to start."""


class AgentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # Each field but the token is a flag of `vllm-sleep agent` (build_parser): --listen-host for
    # listen_host, its description the flag's help.
    listen_host: str = Field("0.0.0.0", description="address for both ports (default 0.0.0.0)")
    # 0: pick a free port (tests).
    public_port: int = Field(
        PUBLIC_PORT, ge=0, le=65535, description=f"OpenAI allowlist port ({PUBLIC_PORT})"
    )
    control_port: int = Field(
        CONTROL_PORT, ge=0, le=65535, description=f"operator control port ({CONTROL_PORT})"
    )
    upstream: str = Field(
        f"http://127.0.0.1:{VLLM_PORT}", description=f"vLLM base URL (http://127.0.0.1:{VLLM_PORT})"
    )
    control_token: SecretStr  # from --token-file or the environment (from_cli)
    # The file it was read from (a mounted Secret), followed for rotations (agent/token.py).
    control_token_file: str | None = None
    # Inference requests arriving while the engine is not awake wait this long for it.
    hold_timeout: float = Field(30.0, ge=0, description="seconds a request waits for a wake (30)")
    max_held: int = Field(1024, ge=0, description="requests held at once, beyond: 429 (1024)")
    retry_after: int = Field(5, ge=1, description="Retry-After seconds on 503 (5)")
    # Drain bound for POST /sleep without ?drain_timeout=.
    drain_timeout: float = Field(60.0, ge=0, description="default drain bound for /sleep (60)")
    # A stream whose client went away is aborted by vLLM a moment after the agent closes it;
    # wait this long after such an abandon before sleeping (≤0.16 crashes on any running work).
    settle_time: float = Field(0.5, ge=0, description="pause after an abandoned stream (0.5)")
    # /sleep, /wake_up and the level-2 reload: a first sleep of a 70B model takes ~45 s.
    vllm_timeout: float = Field(900.0, gt=0, description="timeout of vLLM sleep/wake calls (900)")
    # /health polls while loading or failed, then while awake or asleep; consecutive failed
    # polls before "failed".
    poll_interval: float = Field(1.0, gt=0, description="/health poll while loading (1)")
    health_interval: float = Field(5.0, gt=0, description="/health poll when up (5)")
    health_failures: int = Field(3, ge=1, description="failed polls before 'failed' (3)")
    # The public port's request bounds, as the gateway's (docs/security.md): the whole head
    # within header_timeout, no body stall past body_timeout (0 = none), one body's size, and
    # the bytes of bodies held at once.
    header_timeout: float = Field(60.0, ge=0, description="request head must arrive within (60)")
    body_timeout: float = Field(60.0, ge=0, description="request body may not stall for (60)")
    max_body_bytes: int = Field(32 << 20, gt=0, description="request body bound (32 MiB)")
    max_buffered_bytes: int = Field(256 << 20, gt=0, description="bodies held at once (256 MiB)")
    access_log: bool = Field(False, description="log every public request")
    # The sleeping residual (agent/residual.py): vLLM's log file in a volume shared with the
    # vLLM container, and the engine's awake device memory (its share), both optional.
    vllm_log_file: Path | None = Field(
        None, description="vLLM's log file, for its sleep report (none)"
    )
    engine_memory_bytes: int | None = Field(
        None, gt=0, description="the engine's awake share (none)"
    )
    # Where to write vLLM's logging configuration (VLLM_LOGGING_CONFIG_PATH) at start, so that
    # vLLM logs into vllm_log_file too (agent/vllm_logging.py).
    vllm_logging_config: Path | None = Field(
        None,
        description="write vLLM's logging config here at start, logging to --vllm-log-file (none)",
    )

    @field_validator("upstream")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        # Plain HTTP: vLLM listens on the pod's loopback, and the public port's data path
        # (h1's upstream pool) speaks no TLS.
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL with a host, got {v!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"upstream must not carry a path or query, got {v!r}")
        return v.rstrip("/")

    @field_validator("control_token")
    @classmethod
    def _non_empty(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("the control token is empty")
        return v

    @model_validator(mode="after")
    def _config_names_a_log_file(self) -> AgentConfig:
        if self.vllm_logging_config is not None and self.vllm_log_file is None:
            raise ValueError("--vllm-logging-config needs --vllm-log-file (the file it names)")
        return self

    @classmethod
    def from_cli(cls, argv: list[str], env: Mapping[str, str]) -> AgentConfig:
        """Parse `vllm-sleep agent` arguments; the token comes from --token-file or the env."""
        ns = build_parser().parse_args(argv)
        values = {k: v for k, v in vars(ns).items() if v is not None and k != "token_file"}
        values["control_token"] = _read_token(ns.token_file, env)
        values["control_token_file"] = ns.token_file
        try:
            return cls(**values)
        except ValidationError as e:
            raise AgentConfigError(str(e)) from e


def _read_token(token_file: str | None, env: Mapping[str, str]) -> str:
    if token_file:
        try:
            # Secret volumes end files with a newline when written by hand; never part of a token.
            token = Path(token_file).read_text().strip()
        except OSError as e:
            raise AgentConfigError(f"--token-file {token_file}: {e}") from e
    else:
        token = env.get(ENV_CONTROL_TOKEN, "").strip()
    if not token:
        raise AgentConfigError(
            f"no control token: set {ENV_CONTROL_TOKEN} or pass --token-file (the control port "
            "never runs unauthenticated)"
        )
    return token


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # Raise instead of exiting: the sim-kubelet parses agent command lines in-process.
        raise AgentConfigError(f"vllm-sleep agent: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vllm-sleep agent", description="the per-pod sleep guard (sidecar)")
    for name, info in AgentConfig.model_fields.items():
        if name == "control_token_file":
            continue  # --token-file, below
        if name == "control_token":
            p.add_argument(
                "--token-file", help=f"control token file (default: ${ENV_CONTROL_TOKEN})"
            )
            continue
        flag = "--" + name.replace("_", "-")
        if info.annotation is bool:
            p.add_argument(flag, action="store_true", default=None, help=info.description)
        else:
            p.add_argument(flag, type=_scalar(info.annotation), help=info.description)
    return p


def _scalar(annotation: object) -> type:
    """The flag's type: int or float for numbers (argparse names a bad one), else str."""
    kinds = get_args(annotation) or (annotation,)
    return next((k for k in kinds if k in (int, float)), str)
