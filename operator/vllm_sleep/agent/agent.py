"""Agent: one pod's sleep guard, runnable in-process (the sim-kubelet runs many in one loop)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..h1 import Server, UpstreamPool
from ..serve import Service
from ..vllm import VLLMClient
from .clock import SYSTEM, Clock
from .config import AgentConfig
from .control import ControlAPI
from .gate import Gate
from .metrics import AgentMetrics
from .proxy import PublicProxy
from .residual import ResidualMeter
from .state import StateBoard
from .supervisor import Supervisor
from .transitions import Transitions
from .vllm_logging import write_logging_config

log = logging.getLogger(__name__)

# vLLM (uvicorn) closes idle keep-alive connections after 5 s; a pooled connection must be
# dropped before that, or a request can be written into a socket the server is closing.
UPSTREAM_KEEPALIVE = 4.0
SHUTDOWN_GRACE = 2.0
CONTROL_IDLE_DEFAULT = 3630.0  # aiohttp's own, when the timeouts are 0 (none)


class Agent(Service):
    def __init__(self, config: AgentConfig, *, clock: Clock = SYSTEM) -> None:
        self.config = config
        self.clock = clock  # the one clock of this agent: every part below reads it
        self.board = StateBoard(clock.monotonic)
        self.gate = Gate(
            max_held=config.max_held,
            on_edge=self.board.bump,
            # A held request wakes the engine itself when its sleep granted that.
            on_held=lambda: self.transitions.wake_for_request(),
            clock=clock.monotonic,
        )
        self.metrics = AgentMetrics(self.gate, self.board)
        self.vllm = VLLMClient(config.upstream, transition_timeout=config.vllm_timeout)
        self.transitions = Transitions(
            self.board,
            self.gate,
            self.vllm,
            self.metrics,
            settle_time=config.settle_time,
            clock=clock,
            residual=ResidualMeter(config.vllm_log_file, config.engine_memory_bytes),
        )
        self.supervisor = Supervisor(
            self.board,
            self.gate,
            self.vllm,
            poll_interval=config.poll_interval,
            health_interval=config.health_interval,
            health_failures=config.health_failures,
        )
        self.control = ControlAPI(
            config, self.board, self.gate, self.transitions, self.metrics, clock=clock
        )
        self._pool: UpstreamPool | None = None
        self._runners: list[web.BaseRunner] = []
        self._public: Server | None = None
        self._supervisor_task: asyncio.Task[None] | None = None
        self.public_port: int | None = None  # bound ports, known after start()
        self.control_port: int | None = None

    @property
    def public_url(self) -> str:
        return f"http://{_url_host(self.config.listen_host)}:{self.public_port}"

    @property
    def control_url(self) -> str:
        return f"http://{_url_host(self.config.listen_host)}:{self.control_port}"

    def snapshot(self) -> dict[str, object]:
        """What GET /state answers."""
        return self.control.snapshot()

    async def start(self) -> None:
        """Bind both ports and start watching the engine; returns once listening."""
        cfg = self.config
        if cfg.vllm_logging_config is not None and cfg.vllm_log_file is not None:
            # Before listening: vLLM starts once this sidecar's startup probe passes, and
            # refuses to start without the file its VLLM_LOGGING_CONFIG_PATH names.
            write_logging_config(cfg.vllm_logging_config, cfg.vllm_log_file)
        # No read timeout: a long generation streams, or (non-streamed) answers at its end.
        self._pool = UpstreamPool(connect_timeout=5.0, idle_timeout=UPSTREAM_KEEPALIVE)
        proxy = PublicProxy(
            cfg,
            self.gate,
            self.board,
            self.metrics,
            self._pool,
            self.supervisor.poke,
            clock=self.clock,
        )
        try:
            self._public = proxy.server()  # h1, as the gateway: the public port's bounds
            self.public_port = await self._public.start(cfg.listen_host, cfg.public_port)
            control = web.AppRunner(
                self.control.app(),
                access_log=None,
                shutdown_timeout=SHUTDOWN_GRACE,
                logger=_ClientErrorLog(log, {}),
                # aiohttp's keep-alive timer runs from the connection's start and from each
                # answer, and only closes a connection still waiting for a complete head: so
                # it is the control port's head timeout (idle and trickled heads alike), never
                # a cut of a long-poll in progress. An unread body is drained for at most
                # lingering_time, then the connection is closed.
                keepalive_timeout=cfg.header_timeout or CONTROL_IDLE_DEFAULT,
                lingering_time=cfg.body_timeout or CONTROL_IDLE_DEFAULT,
            )
            self.control_port = await self._serve(control, cfg.control_port)
        except BaseException:
            await self.stop()
            raise
        self._supervisor_task = asyncio.create_task(self.supervisor.run(), name="agent-supervisor")
        log.info(
            "agent listening: public %s, control %s, upstream %s",
            self.public_url,
            self.control_url,
            cfg.upstream,
        )

    async def stop(self) -> None:
        """Stop serving. Held requests get 503; the engine is left as it is."""
        if self._supervisor_task is not None:
            self._supervisor_task.cancel()
            try:
                await self._supervisor_task
            except asyncio.CancelledError:
                pass
            self._supervisor_task = None
        await self.transitions.cancel()
        self.gate.shutdown()
        if self._public is not None:
            await self._public.stop(SHUTDOWN_GRACE)
            self._public = None
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.vllm.aclose()

    async def _serve(self, runner: web.BaseRunner, port: int) -> int:
        await runner.setup()
        self._runners.append(runner)
        site = web.TCPSite(runner, self.config.listen_host, port, reuse_address=True)
        await site.start()
        sockname = runner.addresses[-1]
        return int(sockname[1])


class _ClientErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logs a request it cannot parse (the only errors that reach it on the
    control port: handler errors are the API's own) with `exception()`, an ERROR and a
    traceback. It is the client's error: one INFO line."""

    def exception(self, msg: object, *args: object, exc_info: object = None, **_: object) -> None:
        self.info("%s: %s", str(msg) % args, exc_info)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host
