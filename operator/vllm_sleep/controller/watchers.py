"""Long-polls of each pod agent's state, so the operator hears of held requests at once.

One task per pod: `GET /state?version=V&wait=30` returns as soon as the agent's state changes
(or a first request is held), then the model's loop is kicked. Idle pods cost one open
connection each, not a poll per second.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping

from ..api.agent_protocol import StateReport
from ..reconcile.observe import ObservedPod
from .agents import UNREACHABLE, AgentClient, AgentError

LONG_POLL_SECONDS = 30.0
RETRY_SECONDS = 1.0
# Consecutive failed polls before a known agent reads as unreachable. One lost poll (a busy
# agent, a network blip) is not a dead agent: reporting it flipped replicas to Starting/Failed
# and back, a status write and a node check each time, on every busy moment of a big fleet.
UNREACHABLE_AFTER = 3


class AgentWatchers:
    def __init__(
        self,
        agents: AgentClient,
        kick: asyncio.Event,
        on_report: Callable[[str, StateReport], None] | None = None,
    ) -> None:
        self._agents = agents
        self._kick = kick
        self._on_report = on_report  # told of each changed report (pod name, report)
        self._tasks: dict[str, tuple[str, str, asyncio.Task[None]]] = {}  # pod -> (ip, token, task)
        self._reports: dict[str, tuple[str, StateReport]] = {}  # pod -> (ip, last report)
        # An agent refused the token (401): it was rotated; the model's loop reads it again.
        self.token_rejected = False

    def report(self, pod: ObservedPod) -> StateReport:
        """The last report of the agent at this pod's IP: a pod replaced under the same name
        (new IP) reads as unreachable, never as its predecessor."""
        ip, report = self._reports.get(pod.name, ("", UNREACHABLE))
        return report if pod.ip and ip == pod.ip else UNREACHABLE

    def set_report(self, pod: str, ip: str, report: StateReport) -> None:
        """A transition's answer; never over a newer report the long-poll already brought
        (held requests released by a wake finish before the wake's caller reads its answer)."""
        known_ip, known = self._reports.get(pod, ("", UNREACHABLE))
        if (
            known_ip == ip
            and known.version is not None
            and report.version is not None
            and known.version > report.version
        ):
            return
        self._reports[pod] = (ip, report)

    def sync(self, wanted: Mapping[str, str], token: str) -> None:
        """Watch exactly the agents in `wanted` (pod -> IP)."""
        for name in list(self._tasks):
            ip, known_token, task = self._tasks[name]
            if wanted.get(name) != ip:  # pod gone or replaced (new IP)
                task.cancel()
                del self._tasks[name]
                self._reports.pop(name, None)
            elif known_token != token:  # the token was rotated: poll with the new one
                task.cancel()
                del self._tasks[name]
        for name, ip in wanted.items():
            if name not in self._tasks:
                task = asyncio.create_task(self._watch(name, ip, token), name=f"agent-watch {name}")
                self._tasks[name] = (ip, token, task)

    async def _watch(self, name: str, ip: str, token: str) -> None:
        version: int | None = None
        failed = 0
        while True:
            try:
                report = await self._agents.state(
                    ip, token, version=version, wait=LONG_POLL_SECONDS if version is not None else 0
                )
            except AgentError:  # 401: this token is no longer the agent's
                self.token_rejected = True
                self._kick.set()
                report = UNREACHABLE
            failed = failed + 1 if report is UNREACHABLE else 0
            known = self._reports.get(name, ("", UNREACHABLE))
            if 0 < failed < UNREACHABLE_AFTER and known[0] == ip and known[1] is not UNREACHABLE:
                version = None  # keep the last report; ask again (no long-poll) shortly
                await asyncio.sleep(RETRY_SECONDS)
                continue
            changed = (ip, report) != self._reports.get(name)
            self._reports[name] = (ip, report)
            if changed:
                if self._on_report is not None:  # first: what it starts runs before the pass
                    self._on_report(name, report)
                self._kick.set()
            if report is UNREACHABLE or report.version is None:
                version = None
                await asyncio.sleep(RETRY_SECONDS)
            else:
                version = report.version

    async def close(self) -> None:
        for _ip, _token, task in self._tasks.values():
            task.cancel()
        for _ip, _token, task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
