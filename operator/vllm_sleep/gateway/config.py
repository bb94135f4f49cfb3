"""GatewayConfig: every knob of `vllm-sleep gateway`, from flags with environment defaults."""

from __future__ import annotations

import argparse
import math
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

from vllm_sleep.api.names import PUBLIC_PORT
from vllm_sleep.api.served_names import ExposureError, ExposurePolicy

MIB = 1 << 20
MAX_WORKERS = 64
# The longest Retry-After the OpenAI SDKs obey: openai 1.x falls back to its own short backoff
# past it (a retry storm instead of a pause), openai 3.x stops retrying past 120 s.
MAX_RETRY_AFTER = 60


class GatewayConfigError(ValueError):
    pass


@dataclass(frozen=True)
class GatewayConfig:
    listen_host: str = "0.0.0.0"
    port: int = 8080  # 0 = a free port (tests)
    gateway_id: str = ""  # holderIdentity on demand Leases; "" = derived from the pod name
    namespaces: tuple[str, ...] = ()  # watched namespaces; () = all
    kubeconfig: str | None = None  # None = in-cluster, then ~/.kube/config
    api_keys_file: str | None = None
    max_body_bytes: int = 32 * MIB
    # Bounds on the request path (docs/security.md): the head within header_timeout, no body
    # stall past body_timeout (None = none), request bodies held across all connections, the
    # chunks of one body, and what a JSON body may hold (parsing cost, not just its size).
    header_timeout: float | None = 60.0
    body_timeout: float | None = 60.0
    max_buffered_bytes: int = 256 * MIB
    max_body_chunks: int = 1 << 17
    max_json_tokens: int = 1 << 22
    max_json_depth: int = 128
    retry_after: int = 10  # seconds, in Retry-After of every 429/503 the gateway makes
    demand_interval: float = 10.0  # at most one Lease renewal per model per interval
    backend_port: int = PUBLIC_PORT
    connect_timeout: float = 3.0
    read_timeout: float | None = None  # between two upstream reads; None = no limit
    send_timeout: float | None = 60.0  # a client not reading this long is cut; None = never
    # Which namespaces may serve which model names (api.served_names); empty = all.
    exposure: ExposurePolicy = field(default_factory=ExposurePolicy)
    access_log: bool = False
    # Processes serving the port (gateway/workers.py); None = one per CPU this process may use.
    workers: int | None = None
    # Set on each worker by its supervisor: listen with SO_REUSEPORT; a restarted worker joins
    # the port only once its first list is in (its siblings serve meanwhile).
    reuse_port: bool = False
    bind_after_list: bool = False

    @property
    def identity(self) -> str:
        return self.gateway_id or f"gateway-{socket.gethostname()}"

    @classmethod
    def from_cli(cls, argv: list[str], env: Mapping[str, str] | None = None) -> GatewayConfig:
        env = os.environ if env is None else env
        parser = build_parser(env)
        try:
            ns = parser.parse_args(argv)
        except SystemExit as e:
            raise GatewayConfigError(f"invalid arguments: {' '.join(argv)}") from e
        if ns.max_body_bytes <= 0:
            raise GatewayConfigError("--max-body-bytes must be > 0")
        if ns.read_timeout < 0 or ns.send_timeout < 0:
            raise GatewayConfigError("--read-timeout/--send-timeout must be >= 0 (0 = none)")
        for flag in ("header_timeout", "body_timeout"):
            if not getattr(ns, flag) >= 0:  # NaN too
                raise GatewayConfigError(f"--{flag.replace('_', '-')} must be >= 0 (0 = none)")
        for flag in ("max_buffered_bytes", "max_body_chunks", "max_json_tokens", "max_json_depth"):
            if getattr(ns, flag) <= 0:
                raise GatewayConfigError(f"--{flag.replace('_', '-')} must be > 0")
        if ns.max_buffered_bytes < ns.max_body_bytes:
            raise GatewayConfigError("--max-buffered-bytes must be >= --max-body-bytes")
        if ns.demand_interval <= 0 or ns.connect_timeout <= 0:
            raise GatewayConfigError("--demand-interval/--connect-timeout must be > 0")
        # Every flag is range-checked and named in its refusal: a port outside 0-65535 would
        # fail in bind(), a backend port of 0 would make every replica "refuse the
        # connection", and "nan" passes a `<= 0` check (a NaN deadline never expires).
        if not 0 <= ns.retry_after <= MAX_RETRY_AFTER:
            raise GatewayConfigError(
                f"--retry-after must be 0-{MAX_RETRY_AFTER} seconds: the OpenAI SDKs ignore a "
                "longer Retry-After (docs/gateway.md, Clients)"
            )
        if not 0 <= ns.port <= 65535:
            raise GatewayConfigError("--port must be 0-65535")
        if not 0 < ns.backend_port <= 65535:
            raise GatewayConfigError("--backend-port must be 1-65535")
        for flag in ("demand_interval", "connect_timeout", "read_timeout", "send_timeout"):
            if math.isnan(getattr(ns, flag)):
                raise GatewayConfigError(f"--{flag.replace('_', '-')} must be a number")
        if ns.workers is not None and not 1 <= ns.workers <= MAX_WORKERS:
            raise GatewayConfigError(f"--workers must be 1-{MAX_WORKERS}")
        try:
            exposure = ExposurePolicy.parse(ns.expose)
        except ExposureError as e:
            raise GatewayConfigError(str(e)) from e
        # A flag named as its field sets it as parsed; the timeouts read 0 as none; the rest
        # are converted here.
        values = {f.name: getattr(ns, f.name) for f in fields(cls) if hasattr(ns, f.name)}
        for timeout in ("header_timeout", "body_timeout", "read_timeout", "send_timeout"):
            values[timeout] = values[timeout] or None
        return cls(
            **values,
            listen_host=ns.host,
            gateway_id=ns.id or env.get("POD_NAME", "") or f"gateway-{uuid.uuid4().hex[:8]}",
            namespaces=tuple(n for part in ns.namespace for n in part.split(",") if n),
            exposure=exposure,
        )


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(
        prog="vllm-sleep gateway", description="OpenAI-compatible front door for every model."
    )
    a = p.add_argument
    a("--host", default=env.get("VLLM_SLEEP_GATEWAY_HOST", "0.0.0.0"))
    a("--port", type=int, default=int(env.get("VLLM_SLEEP_GATEWAY_PORT", "8080")))
    a("--id", default=env.get("VLLM_SLEEP_GATEWAY_ID", ""), help="holderIdentity on demand Leases")
    a("--namespace", action="append", default=[], help="watch only these (repeat or comma list)")
    a("--kubeconfig", default=env.get("KUBECONFIG") or None)
    a(
        "--api-keys-file",
        default=env.get("VLLM_SLEEP_API_KEYS_FILE") or None,
        help="one accepted API key per line; /v1/* then needs Authorization: Bearer <key>",
    )
    a("--max-body-bytes", type=int, default=32 * MIB)
    a(
        "--header-timeout",
        type=float,
        default=60.0,
        help="a request head must arrive within this (seconds; 408); 0 = none",
    )
    a(
        "--body-timeout",
        type=float,
        default=60.0,
        help="a request body may not stall for longer (seconds; 408); 0 = none",
    )
    a(
        "--max-buffered-bytes",
        type=int,
        default=256 * MIB,
        help="request bodies held at once across all connections (past it: 503)",
    )
    a("--max-body-chunks", type=int, default=1 << 17, help="chunks of one chunked body (413)")
    a(
        "--max-json-tokens",
        type=int,
        default=1 << 22,
        help="keys and values of one JSON body over 64 KiB (413)",
    )
    a("--max-json-depth", type=int, default=128, help="nesting of one JSON body over 64 KiB (400)")
    a(
        "--retry-after",
        type=int,
        default=10,
        help=f"seconds, sent with every 429/503 (0-{MAX_RETRY_AFTER}: the SDKs' bound)",
    )
    a("--demand-interval", type=float, default=10.0, help="min seconds between Lease renewals")
    a("--backend-port", type=int, default=PUBLIC_PORT, help="the agent's public port on pods")
    a("--connect-timeout", type=float, default=3.0)
    a("--read-timeout", type=float, default=0.0, help="0 = none (long generations)")
    a(
        "--send-timeout",
        type=float,
        default=60.0,
        help="cut a client that reads nothing for this long (its request is aborted); 0 = never",
    )
    a(
        "--expose",
        action="append",
        default=[],
        metavar="NAMESPACE=PATTERN[,PATTERN]",
        help="multi-tenant installs: the model names (glob patterns) each namespace may serve; "
        "repeat per namespace; once given, unlisted namespaces serve nothing (docs/security.md)",
    )
    a("--access-log", action="store_true")
    a(
        "--workers",
        type=int,
        default=None,
        help="processes serving the port, each with its own watches and queues "
        f"(default: one per CPU the process may use, its cgroup CPU limit included, at most 4; "
        f"1-{MAX_WORKERS})",
    )
    return p
