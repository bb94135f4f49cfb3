"""`vllm-sleep gateway ...`: wire the Kubernetes seams into a Gateway and serve until SIGTERM.

With `--workers N` (N > 1; the default is one per usable CPU) this process supervises N
workers (gateway/workers.py), each this same command serving the port with SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from ..serve import cli_main, event_loop_runner, serve_until, stop_on_signals
from .config import GatewayConfig, build_parser
from .demand import LeaseDemand
from .gateway import Gateway
from .kube_source import KubernetesSource, check_credentials, kube_client
from .metrics import GatewayMetrics
from .workers import (
    WorkerRole,
    default_workers,
    die_with_supervisor,
    merged_registry,
    supervise,
    tag_logs,
    worker_role,
)


def main(argv: list[str]) -> int:
    role = worker_role(os.environ)
    if role is not None:
        if not die_with_supervisor(role):
            return 1
        tag_logs(role)
        return cli_main(
            argv,
            "vllm-sleep gateway",
            build_parser,
            lambda args, env: _as_worker(GatewayConfig.from_cli(args, env), role),
            lambda config: _run(config, role),
            runner=event_loop_runner(),
        )
    chosen: dict[str, int] = {}

    def load(args: list[str], env: Mapping[str, str]) -> GatewayConfig:
        config = GatewayConfig.from_cli(args, env)
        chosen["workers"] = config.workers or default_workers()
        return config

    def run(config: GatewayConfig) -> Coroutine[Any, Any, None]:
        if chosen["workers"] == 1:
            return _run(config)
        return _supervise(argv, config, chosen)

    code = cli_main(argv, "vllm-sleep gateway", build_parser, load, run, runner=_runner(chosen))
    return code or chosen.get("exit", 0)


def _runner(chosen: dict[str, int]) -> Callable[[Coroutine[Any, Any, None]], None]:
    loop_runner = event_loop_runner()

    def run(coro: Coroutine[Any, Any, None]) -> None:
        # One process serves on the fastest loop; a supervisor only waits on its workers.
        (loop_runner if chosen.get("workers") == 1 else asyncio.run)(coro)

    return run


def _as_worker(config: GatewayConfig, role: WorkerRole) -> GatewayConfig:
    # --max-buffered-bytes bounds the gateway's memory (the pod's limit), not one process's:
    # each of N workers holds its share, and always at least one whole body.
    share = max(config.max_body_bytes, config.max_buffered_bytes // (config.workers or 1))
    return dataclasses.replace(
        config,
        workers=1,
        reuse_port=True,
        bind_after_list=role.late,
        max_buffered_bytes=share,
    )


async def _supervise(argv: list[str], config: GatewayConfig, chosen: dict[str, int]) -> None:
    check_credentials(config.kubeconfig)  # once, here, rather than in each worker's crash loop
    chosen["exit"] = await supervise(
        argv, config.listen_host, config.port, config.identity, chosen["workers"]
    )


async def _run(config: GatewayConfig, role: WorkerRole | None = None) -> None:
    with stop_on_signals() as stop:
        api = await kube_client(config.kubeconfig)
        try:
            metrics = GatewayMetrics(worker=None if role is None else role.index)
            if role is not None:
                metrics.exposed = merged_registry()
            source = KubernetesSource(
                api, metrics, namespaces=config.namespaces, port=config.backend_port
            )
            gateway = Gateway(config, source, LeaseDemand(api, config.identity), metrics=metrics)
            # The first list of ModelDeployments and Pods can take forever (API down, RBAC
            # missing: the watch retries); serve_until hears a stop during it.
            await serve_until(gateway, stop)
        finally:
            await api.close()
