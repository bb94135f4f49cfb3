"""`vllm-sleep operator`: the one place that wires the operator process together."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import Any

import httpx
import kopf
from aiohttp import web
from kubernetes_asyncio import client, config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.served_names import ExposureError, ExposurePolicy
from ..logs import configure
from ..metrics import OperatorMetrics
from .agents import AgentClient
from .context import Context, Settings
from .handlers import register
from .kube import Kube
from .pools import Pools
from .served_names import ServedNames

DEFAULT_AGENT_IMAGE = "ghcr.io/vllm-sleep/vllm-sleep-operator:0.1.0"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vllm-sleep operator", description="Run the operator.")
    p.add_argument("--namespace", action="append", default=[], help="watch only these (repeatable)")
    p.add_argument(
        "--agent-image",
        default=os.environ.get("VLLM_SLEEP_AGENT_IMAGE", DEFAULT_AGENT_IMAGE),
        help="image of the agent sidecar (normally the operator's own image)",
    )
    p.add_argument(
        "--metrics-bind",
        default=os.environ.get("VLLM_SLEEP_METRICS_BIND", "127.0.0.1:8080"),
        help="host:port for /metrics (0.0.0.0:8080 in a pod)",
    )
    p.add_argument(
        "--health-bind",
        default=os.environ.get("VLLM_SLEEP_HEALTH_BIND", "127.0.0.1:8081"),
        help="host:port for kopf's /healthz liveness endpoint",
    )
    p.add_argument(
        "--expose",
        action="append",
        default=[],
        metavar="NAMESPACE=PATTERN[,PATTERN]",
        help="the gateway's --expose policy, so refused models say so in their status",
    )
    p.add_argument("--resync-seconds", type=float, default=30.0)
    p.add_argument("--log-level", default=os.environ.get("VLLM_SLEEP_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--debug", action="store_true", help="debug logs of the operator's own decisions"
    )
    return p


async def _load_kube_config() -> None:
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
    else:
        await config.load_kube_config()


async def _serve_metrics(metrics: OperatorMetrics, bind: str) -> web.AppRunner:
    async def handler(_req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/metrics", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    host, _, port = bind.rpartition(":")
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    return runner


async def run(args: argparse.Namespace) -> None:
    from .children import Children
    from .spec import parse_model

    await _load_kube_config()
    api = client.ApiClient()
    metrics = OperatorMetrics()
    settings = Settings(agent_image=args.agent_image, resync_seconds=args.resync_seconds)
    kube = Kube(api)
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=2000, max_keepalive_connections=500)
    ) as http:
        ctx = Context(
            settings=settings,
            kube=kube,
            agents=AgentClient(http),
            metrics=metrics,
            children=Children(kube),
            parse=parse_model,
            pools=Pools(kube, metrics),
            names=ServedNames(args.exposure),
        )
        registry = kopf.OperatorRegistry()
        register(registry, ctx)
        runner = await _serve_metrics(metrics, args.metrics_bind)
        kwargs: dict[str, Any] = {"clusterwide": not args.namespace, "namespaces": args.namespace}
        try:
            await kopf.operator(
                registry=registry,
                liveness_endpoint=f"http://{args.health_bind}/healthz",
                **kwargs,
            )
        finally:
            await runner.cleanup()
            await api.close()


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.exposure = ExposurePolicy.parse(args.expose)
    except ExposureError as e:
        p.error(str(e))
    configure(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per agent poll is noise
    # kopf logs every successful event handler at INFO; ours only kick a model's loop.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.debug:
        logging.getLogger("vllm_sleep").setLevel(logging.DEBUG)
    asyncio.run(run(args))
    return 0
