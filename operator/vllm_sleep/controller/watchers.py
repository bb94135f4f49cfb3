"""Long-polls of each pod agent's state, so the operator hears of held requests at once.

One task per pod: `GET /state?version=V&wait=30` returns as soon as the agent's state changes
(or a first request is held), then the model's loop is kicked. Idle pods cost one open
connection each, not a poll per second.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from ..api.agent_protocol import StateReport
from .agents import UNREACHABLE, AgentClient

LONG_POLL_SECONDS = 30.0
RETRY_SECONDS = 1.0


class AgentWatchers:
    def __init__(self, agents: AgentClient, kick: asyncio.Event) -> None:
        self._agents = agents
        self._kick = kick
        self._tasks: dict[str, tuple[str, asyncio.Task[None]]] = {}  # pod -> (ip, task)
        self._reports: dict[str, StateReport] = {}

    def report(self, pod: dict[str, Any]) -> StateReport:
        return self._reports.get(pod["metadata"]["name"], UNREACHABLE)

    def set_report(self, pod: str, report: StateReport) -> None:
        self._reports[pod] = report

    def sync(self, pods: list[dict[str, Any]], token: str) -> None:
        wanted = {}
        for p in pods:
            ip = p.get("status", {}).get("podIP")
            if ip and not p["metadata"].get("deletionTimestamp"):
                wanted[p["metadata"]["name"]] = ip
        for name in list(self._tasks):
            ip, task = self._tasks[name]
            if wanted.get(name) != ip:  # pod gone or replaced (new IP)
                task.cancel()
                del self._tasks[name]
                self._reports.pop(name, None)
        for name, ip in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._watch(name, ip, token), name=f"agent-watch {name}")
                self._tasks[name] = (ip, task)

    async def _watch(self, name: str, ip: str, token: str) -> None:
        version: int | None = None
        while True:
            report = await self._agents.state(
                ip, token, version=version, wait=LONG_POLL_SECONDS if version is not None else 0
            )
            changed = report != self._reports.get(name)
            self._reports[name] = report
            if changed:
                self._kick.set()
            if report is UNREACHABLE or report.version is None:
                version = None
                await asyncio.sleep(RETRY_SECONDS)
            else:
                version = report.version

    async def close(self) -> None:
        for _ip, task in self._tasks.values():
            task.cancel()
        for _ip, task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
