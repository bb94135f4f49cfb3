"""What every long-running `vllm-sleep` server (the pod agent, the gateway) shares: a service
started and stopped as an async context, the SIGTERM/SIGINT stop, and the CLI start-up around
them. No HTTP here: both servers and the test harness may import it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from .logs import configure

C = TypeVar("C")
W = TypeVar("W")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(ABC):
    """A server bound by `start()` (which, failing or cancelled, stops what it started) and
    released by `stop()`; `async with` does both."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """An event SIGTERM or SIGINT sets while the block runs (on platforms with loop signal
    handlers; elsewhere Ctrl-C stays a KeyboardInterrupt)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def serve_until(service: Service, stop: asyncio.Event) -> None:
    """Start `service`, serve until `stop` is set, then stop it.

    A start can wait long (the gateway's first list while the API is down), so it races
    `stop`: a stop is heard at any time, and a start cut short stops what it started."""
    starting = await until_stopped(service.start(), stop)
    if starting.cancelled():
        return
    starting.result()  # raise what made the start fail
    try:
        await stop.wait()
    finally:
        await service.stop()


async def until_stopped(work: Awaitable[W], stop: asyncio.Event) -> asyncio.Future[W]:
    """Run `work` until it ends or `stop` is set, whichever comes first; work cut short is
    cancelled and awaited. Returns its future: done (result or exception) or cancelled."""
    running = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((running, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not running.done():
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
    return running


def event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner when installed, else asyncio's: both servers' request paths are event-loop
    bound (docs/benchmarks.md), and each behaves the same on either loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    return runner


def cli_main(
    argv: list[str],
    prog: str,
    parser: Callable[[], argparse.ArgumentParser],
    load: Callable[[list[str], Mapping[str, str]], C],
    run: Callable[[C], Coroutine[Any, Any, None]],
    *,
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run,
) -> int:
    """A server's `main`: `--help` prints the `parser`'s help (0); a configuration `load` (from
    the arguments and the environment) refuses with ValueError (2); an address `run` cannot bind
    or a file it cannot read (1); else `run` until it returns (0)."""
    configure()
    if any(a in ("-h", "--help") for a in argv):
        parser().print_help()
        return 0
    try:
        config = load(argv, os.environ)
    except ValueError as e:
        print(_prefixed(prog, e), file=sys.stderr)
        return 2
    try:
        runner(run(config))
    except OSError as e:
        print(_prefixed(prog, e), file=sys.stderr)
        return 1
    return 0


def _prefixed(prog: str, error: Exception) -> str:
    message = str(error)
    return message if message.startswith(f"{prog}:") else f"{prog}: {message}"
