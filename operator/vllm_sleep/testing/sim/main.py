"""`vllm-sleep sim MODEL [vllm serve args]`: one simulated vLLM server, standalone.

    VLLM_SERVER_DEV_MODE=1 vllm-sleep sim meta-llama/Llama-3.1-8B-Instruct --port 8000 --enable-sleep-mode

Simulator settings: flags (--profile, --weights-size, --time-scale, --*-seconds, ...) or
VLLM_SIM_* environment variables; see docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from ...serve import stop_on_signals
from .config import SimConfig, SimConfigError
from .host import EngineHost
from .usage import usage

log = logging.getLogger("vllm_sleep.sim")


async def _serve(cfg: SimConfig) -> int:
    host = EngineHost()
    engine = await host.start_engine(cfg)
    log.info(
        "simulated vLLM %s (%s profile) on %s:%s",
        cfg.model,
        cfg.profile,
        cfg.host or "0.0.0.0",
        engine.bound_port,
    )
    with stop_on_signals() as stop:
        dead = asyncio.create_task(engine.dead.wait())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait({dead, stopped}, return_when=asyncio.FIRST_COMPLETED)
        crashed = engine.dead.is_set() and not stop.is_set()
        for t in (dead, stopped):
            t.cancel()
        await host.stop_all()
    if crashed:
        log.error(
            "engine exited: %s",
            engine.failure or (engine.violations[-1].message if engine.violations else "dead"),
        )
    return 1 if crashed else 0


def main(argv: list[str]) -> int:
    logging.basicConfig(
        level=os.environ.get("VLLM_LOGGING_LEVEL", "INFO"),
        format="%(levelname)s %(asctime)s %(name)s: %(message)s",
    )
    if any(a in ("-h", "--help") for a in argv):
        print(usage())
        return 0
    try:
        cfg = SimConfig.from_cli(argv, os.environ)
    except SimConfigError as e:
        print(f"vllm-sleep sim: error: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(cfg))
    except OSError as e:  # port in use, address not available
        print(f"vllm-sleep sim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
