"""`vllm-sleep operator`: the one place that wires the operator process together."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from kubernetes_asyncio import client, config
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..api.leader import LEADER_LEASE_NAME, Timings
from ..api.served_names import ExposureError, ExposurePolicy
from ..kubeconfig import NO_KUBECONFIG, KubeconfigError, check_kubeconfig, no_credentials
from ..logs import configure
from ..metrics import OperatorMetrics
from ..reconcile.node_loss import NODE_LOST_SECONDS
from .agent_transport import AgentTransport
from .agents import AgentClient
from .context import Context, Settings
from .kube import LEADER_CONNECTIONS, Kube, api_client
from .leader import LeaderElector
from .pools import Pools
from .served_names import ServedNames

DEFAULT_AGENT_IMAGE = "ghcr.io/vllm-sleep/vllm-sleep-operator:0.1.0"
DEFAULT_LEASE_NAMESPACE = "vllm-sleep-system"
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """Where the leader Lease lives by default: the operator pod's own namespace."""
    if ns := os.environ.get("POD_NAMESPACE"):
        return ns
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or DEFAULT_LEASE_NAMESPACE
    except OSError:
        return DEFAULT_LEASE_NAMESPACE


def _identity() -> str:
    """Pod name plus a random part: a restarted process is a new candidate, never mistaken for
    the one that held the Lease before it (that one may still be acting)."""
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}_{uuid.uuid4().hex[:8]}"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def host_port(value: str) -> str:
    """An argparse type: "host:port", port 0..65535 (kopf's liveness URL is built from it)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port (e.g. 0.0.0.0:8080)")
    return value


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
        type=host_port,
        help="host:port for /metrics (0.0.0.0:8080 in a pod)",
    )
    p.add_argument(
        "--health-bind",
        default=os.environ.get("VLLM_SLEEP_HEALTH_BIND", "127.0.0.1:8081"),
        type=host_port,
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
    p.add_argument(
        "--node-lost-seconds",
        type=float,
        default=NODE_LOST_SECONDS,
        help="a pod whose agent is silent and whose node is gone or not Ready this long is "
        "force-deleted and replaced (docs/operator.md)",
    )
    lead = p.add_argument_group("leader election (docs/reliability.md)")
    lead.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="act only while holding the leader Lease (run 2+ replicas; the chart turns it on)",
    )
    lead.add_argument("--leader-lease-namespace", default=None, help="default: the pod's own")
    lead.add_argument("--leader-lease-name", default=LEADER_LEASE_NAME)
    lead.add_argument("--leader-identity", default=None, help="default: pod name + random")
    t = Timings()
    lead.add_argument("--leader-lease-duration", type=float, default=t.lease_duration)
    lead.add_argument("--leader-renew-deadline", type=float, default=t.renew_deadline)
    lead.add_argument("--leader-retry-period", type=float, default=t.retry_period)
    p.add_argument(
        "--log-level",
        default=os.environ.get("VLLM_SLEEP_LOG_LEVEL", "INFO"),
        type=str.upper,
        choices=LOG_LEVELS,
    )
    p.add_argument(
        "--debug", action="store_true", help="debug logs of the operator's own decisions"
    )
    return p


async def _load_kube_config() -> None:
    how = "run it in a pod with its ServiceAccount, or set KUBECONFIG"
    try:
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
        elif check_kubeconfig(config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION):  # what it reads
            await config.load_kube_config()
        else:
            raise no_credentials(NO_KUBECONFIG, how)
    except config.ConfigException as e:  # neither in a pod nor given a kubeconfig
        raise no_credentials(e, how) from e


async def _serve_metrics(metrics: OperatorMetrics, bind: str) -> web.AppRunner:
    async def handler(_req: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return await _serve_get(bind, "/metrics", handler)


async def _serve_standby_health(bind: str) -> web.AppRunner:
    """/healthz while standing by (kopf serves it once this replica leads): a standby is alive."""

    async def handler(_req: web.Request) -> web.Response:
        return web.json_response({"status": "standby"})

    return await _serve_get(bind, "/healthz", handler)


async def _serve_get(
    bind: str, path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.AppRunner:
    """One GET route on `bind` ("host:port", as `host_port` checked it)."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    host, _, port = bind.rpartition(":")
    await web.TCPSite(runner, host, int(port)).start()
    return runner


async def _lead(elector: LeaderElector, health_bind: str) -> None:
    """Block as a standby until this replica holds the leader Lease."""
    health = await _serve_standby_health(health_bind)
    try:
        await elector.acquire()
    finally:
        await health.cleanup()


async def _act_while_leading(elector: LeaderElector, acting: Awaitable[None]) -> None:
    """Run the handlers while renewing; a lost Lease ends the process (never a second actor),
    a clean stop (SIGTERM: kopf returns) releases the Lease for a standby."""
    handlers = asyncio.ensure_future(acting)
    holding = asyncio.ensure_future(elector.hold())
    try:
        await asyncio.wait({handlers, holding}, return_when=asyncio.FIRST_COMPLETED)
        if not handlers.done():
            elector.stop_acting("another replica holds the leader Lease")
        await handlers
    finally:
        holding.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await holding
        if handlers.done():
            await elector.release()


def forgo_sync_client() -> None:
    """Keep the synchronous `kubernetes` client out of this process (~7 MiB of RSS).

    The operator talks to the apiserver with kubernetes_asyncio, and kopf logs in through it
    (`handlers.register`); kopf imports the sync client only to recognise its objects, which
    this process never hands it. It is installed for the CLI (`vllm-sleep status`, the demo),
    so kopf finds it unless told it is absent: a `None` in `sys.modules` makes its import raise
    ImportError, kopf's "not installed" path. Only before kopf is imported, and never over a
    client already loaded (an in-process caller that uses it)."""
    if "kopf" not in sys.modules:
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]  # None: absent


async def run(args: argparse.Namespace) -> None:
    import kopf  # here, not at the top: `forgo_sync_client` runs first

    from .children import Children
    from .handlers import register
    from .memory import glibc_trim, trim_periodically
    from .parse_memo import ParseMemo
    from .spec import parse_model

    await _load_kube_config()
    api = api_client()
    metrics = OperatorMetrics()
    settings = Settings(
        agent_image=args.agent_image,
        resync_seconds=args.resync_seconds,
        node_lost_seconds=args.node_lost_seconds,
    )
    kube = Kube(api)
    async with httpx.AsyncClient(transport=AgentTransport()) as http:
        ctx = Context(
            settings=settings,
            kube=kube,
            agents=AgentClient(http),
            metrics=metrics,
            children=Children(kube),
            parse=ParseMemo(parse_model),
            pools=Pools(kube, metrics),
            names=ServedNames(args.exposure),
        )
        registry = kopf.OperatorRegistry()
        runners = register(registry, ctx)
        runner = await _serve_metrics(metrics, args.metrics_bind)
        trim = glibc_trim()
        trimming = asyncio.create_task(trim_periodically(trim)) if trim is not None else None
        kwargs: dict[str, Any] = {"clusterwide": not args.namespace, "namespaces": args.namespace}
        leader_api = api_client(LEADER_CONNECTIONS) if args.leader_elect else None
        try:
            elector = None
            if leader_api is not None:
                elector = leader_elector(
                    leader_api, args, lambda leading: metrics.leader.set(1 if leading else 0)
                )
                metrics.leader.set(0)
                await _lead(elector, args.health_bind)
            else:
                metrics.leader.set(1)
            acting = kopf.operator(
                registry=registry,
                liveness_endpoint=f"http://{args.health_bind}/healthz",
                **kwargs,
            )
            await (acting if elector is None else _act_while_leading(elector, acting))
        finally:
            await runners.close()  # kopf's cleanup handler did, unless it was cancelled
            if trimming is not None:
                trimming.cancel()
            await runner.cleanup()
            await api.close()
            if leader_api is not None:
                await leader_api.close()


def leader_elector(
    leader_api: client.ApiClient, args: argparse.Namespace, on_leading: Callable[[bool], None]
) -> LeaderElector:
    """The elector, on a client of its own (`leader_api`, not the one `Kube` shares out): a
    fleet's bring-up queues thousands of requests for the operator's connections, and a renewal
    waiting behind them past the renew deadline would make the leader step down."""
    return LeaderElector(
        client.CoordinationV1Api(leader_api),
        client.CoreV1Api(leader_api),
        args.leader_lease_namespace or _own_namespace(),
        args.leader_lease_name,
        args.leader_identity or _identity(),
        args.timings,
        on_leading=on_leading,
    )


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        args.exposure = ExposurePolicy.parse(args.expose)
    except ExposureError as e:
        p.error(str(e))
    try:
        args.timings = Timings(
            args.leader_lease_duration, args.leader_renew_deadline, args.leader_retry_period
        )
    except ValueError as e:
        p.error(f"leader election timings: {e}")
    if args.node_lost_seconds <= 0:
        p.error("--node-lost-seconds must be positive")
    configure(args.log_level)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per agent poll is noise
    # kopf logs every successful event handler at INFO; ours only kick a model's loop.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if args.debug:
        logging.getLogger("vllm_sleep").setLevel(logging.DEBUG)
    forgo_sync_client()
    try:
        asyncio.run(run(args))
    except KubeconfigError as e:  # no credentials, or a kubeconfig that is empty or not one
        print(f"vllm-sleep operator: {e}", file=sys.stderr)
        return 1
    return 0
