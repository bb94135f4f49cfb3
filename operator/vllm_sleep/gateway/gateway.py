"""Gateway: one process-worth of router, data path and HTTP server over two seams.

`Gateway(config, source, demand)` is all a test or `main` needs; it binds when `start()`
returns (port 0 = a free port, see `url`).
"""

from __future__ import annotations

import logging

from ..h1 import Limits, Server, UpstreamPool
from ..http_common import MAX_HEAD_BYTES, MAX_HEADERS
from ..serve import Service
from .auth import ApiKeys
from .config import GatewayConfig
from .demand import DemandSignal
from .dispatch import Dispatcher
from .errors import server_error
from .inbound import JsonLimits
from .metrics import GatewayMetrics
from .router import Router
from .server import GatewayHandler
from .sources import BackendSource

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 10.0  # seconds for in-flight streams when stopping


class Gateway(Service):
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
        self.router = Router(
            demand, self.metrics, demand_interval=config.demand_interval, exposure=config.exposure
        )
        self.ready = False
        self.port = 0
        self._server: Server | None = None
        self._pool: UpstreamPool | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.listen_host}:{self.port}"

    async def start(self) -> None:
        cfg = self.config
        self._pool = UpstreamPool(
            connect_timeout=cfg.connect_timeout, read_timeout=cfg.read_timeout
        )
        dispatcher = Dispatcher(self.router, self._pool, self.metrics, retry_after=cfg.retry_after)
        keys = ApiKeys(cfg.api_keys_file) if cfg.api_keys_file else None
        handler = GatewayHandler(
            self.router.table,
            dispatcher,
            self.metrics,
            api_keys=keys,
            is_ready=lambda: self.ready,
            max_body=cfg.max_body_bytes,
            json_limits=JsonLimits(max_tokens=cfg.max_json_tokens, max_depth=cfg.max_json_depth),
            access_log=cfg.access_log,
        )
        # A client that disconnects while held or streaming cancels its handler, which frees
        # the queue slot and closes the upstream request (vLLM aborts).
        limits = Limits(
            max_body=cfg.max_body_bytes,
            max_head=MAX_HEAD_BYTES,
            max_headers=MAX_HEADERS,
            send_timeout=cfg.send_timeout,
            header_timeout=cfg.header_timeout,
            body_timeout=cfg.body_timeout,
            max_chunks=cfg.max_body_chunks,
            max_buffered=cfg.max_buffered_bytes,
        )
        # The API key, path and method are checked on the head, before any body is read.
        self._server = Server(
            handler,
            limits,
            on_reject=handler.rejected,
            make_error=server_error,
            on_head=handler.head_check,
        )
        try:
            if not cfg.bind_after_list:
                self.port = await self._server.start(
                    cfg.listen_host, cfg.port, reuse_port=cfg.reuse_port
                )
            await self.router.start()
            await self.source.start(self.router)  # returns after the first full list
            if cfg.bind_after_list:
                self.port = await self._server.start(
                    cfg.listen_host, cfg.port, reuse_port=cfg.reuse_port
                )
        except BaseException:
            # A start that failed or was cancelled (SIGTERM before the first list) would leave the
            # port bound and the watch and demand tasks running: `async with` never calls
            # __aexit__ when __aenter__ raises.
            await self.stop()
            raise
        self.ready = True
        log.info("gateway %s listening on %s", cfg.identity, self.url)

    async def stop(self) -> None:
        self.ready = False
        # Held requests are answered 503 shutting_down now (they never reached an engine);
        # running ones and streams get the grace to finish.
        self.router.end_holds()
        await self.source.stop()
        if self._server is not None:
            await self._server.stop(SHUTDOWN_GRACE)
            self._server = None
        await self.router.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        await self.demand.close()
