"""`vllm-sleep gateway ...`: wire the Kubernetes seams into a Gateway and serve until SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from ..serve import cli_main, serve_until, stop_on_signals
from .config import GatewayConfig, build_parser
from .demand import LeaseDemand
from .gateway import Gateway
from .kube_source import KubernetesSource, kube_client
from .metrics import GatewayMetrics


def main(argv: list[str]) -> int:
    return cli_main(
        argv,
        "vllm-sleep gateway",
        build_parser,
        GatewayConfig.from_cli,
        _run,
        runner=_event_loop_runner(),
    )


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    # The proxy path is event-loop bound (see docs/benchmarks.md); uvloop's faster loop is
    # used when the image has it, and the gateway behaves the same without it.
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return runner


async def _run(config: GatewayConfig) -> None:
    with stop_on_signals() as stop:
        api = await kube_client(config.kubeconfig)
        try:
            metrics = GatewayMetrics()
            source = KubernetesSource(
                api, metrics, namespaces=config.namespaces, port=config.backend_port
            )
            gateway = Gateway(config, source, LeaseDemand(api, config.identity), metrics=metrics)
            # The first list of ModelDeployments and Pods can take forever (API down, RBAC
            # missing: the watch retries); serve_until hears a stop during it.
            await serve_until(gateway, stop)
        finally:
            await api.close()
