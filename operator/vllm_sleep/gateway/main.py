"""`vllm-sleep gateway ...`: wire the Kubernetes seams into a Gateway and serve until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from ..logs import configure
from .config import GatewayConfig, GatewayConfigError, build_parser
from .demand import LeaseDemand
from .gateway import Gateway
from .kube_source import KubernetesSource, kube_client
from .metrics import GatewayMetrics


def main(argv: list[str]) -> int:
    configure()
    if any(a in ("-h", "--help") for a in argv):
        build_parser().print_help()
        return 0
    try:
        config = GatewayConfig.from_cli(argv, os.environ)
    except GatewayConfigError as e:
        print(f"vllm-sleep gateway: {e}", file=sys.stderr)
        return 2
    try:
        _event_loop_runner()(_run(config))
    except OSError as e:  # port taken, address not available, unreadable keys file
        print(f"vllm-sleep gateway: {e}", file=sys.stderr)
        return 1
    return 0


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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    api = await kube_client(config.kubeconfig)
    metrics = GatewayMetrics()
    source = KubernetesSource(api, metrics, namespaces=config.namespaces, port=config.backend_port)
    gateway = Gateway(config, source, LeaseDemand(api, config.identity), metrics=metrics)
    try:
        # The first list of ModelDeployments and Pods can take forever (API down, RBAC
        # missing: the watch retries), so the start races SIGTERM/Ctrl-C: a stop is heard
        # at any time, and a start cut short stops what it started.
        starting = asyncio.ensure_future(gateway.start())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not starting.done():
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
        if starting.cancelled():
            return
        starting.result()  # raise what made the start fail
        try:
            await stop.wait()
        finally:
            await gateway.stop()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await api.close()
