"""Gateway: one process-worth of router, data path and HTTP server over two seams.

`Gateway(config, source, demand)` is all a test or `main` needs; it binds when `start()`
returns (port 0 = a free port, see `url`).
"""

from __future__ import annotations

import asyncio
import logging
from types import TracebackType
from typing import Any

from aiohttp import web

from .auth import ApiKeys
from .config import GatewayConfig
from .demand import DemandSignal
from .dispatch import Dispatcher
from .metrics import GatewayMetrics
from .proxy import make_session
from .router import Router
from .server import GatewayHandler
from .sources import BackendSource

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for in-flight streams when stopping


class Gateway:
    def __init__(
        self,
        config: GatewayConfig,
        source: BackendSource,
        demand: DemandSignal,
        *,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.config = config
        self.source = source
        self.demand = demand
        self.metrics = metrics or GatewayMetrics()
        self.router = Router(demand, self.metrics, demand_interval=config.demand_interval)
        self.ready = False
        self.port = 0
        self._runner: web.ServerRunner | None = None
        self._session: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.config.listen_host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        self._session = make_session(cfg.connect_timeout, cfg.read_timeout)
        dispatcher = Dispatcher(
            self.router, self._session, self.metrics, retry_after=cfg.retry_after
        )
        keys = ApiKeys(cfg.api_keys_file) if cfg.api_keys_file else None
        handler = GatewayHandler(
            self.router.table,
            dispatcher,
            self.metrics,
            api_keys=keys,
            is_ready=lambda: self.ready,
            max_body=cfg.max_body_bytes,
        )
        max_body = cfg.max_body_bytes

        def make_request(
            message: Any, payload: Any, protocol: Any, writer: Any, task: Any
        ) -> web.BaseRequest:
            return web.BaseRequest(
                message,
                payload,
                protocol,
                writer,
                task,
                asyncio.get_running_loop(),
                client_max_size=max_body,
            )

        # handler_cancellation: a client that disconnects while held or streaming cancels its
        # handler, which frees the queue slot and closes the upstream request (vLLM aborts).
        server = web.Server(
            handler,
            request_factory=make_request,
            handler_cancellation=True,
            auto_decompress=False,  # the handler decodes, bounded (inbound.decode_body)
            access_log=log if cfg.access_log else None,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.listen_host, cfg.port, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        await self.router.start()
        await self.source.start(self.router)  # returns after the first full list
        self.ready = True
        log.info("gateway %s listening on %s", cfg.identity, self.url)

    async def stop(self) -> None:
        self.ready = False
        await self.source.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.router.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self.demand.close()

    async def __aenter__(self) -> Gateway:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
