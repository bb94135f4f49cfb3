"""The operator's client for pod agents' control port (docs/interfaces.md).

The operator never talks to vLLM: only to the agent beside it, on the pod IP (never through a
Service: each replica has its own sleep state), with the model's control token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from ..api.names import CONTROL_PORT
from ..reconcile.lifecycle import AgentState


class AgentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"agent answered {status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class AgentReport:
    state: AgentState
    level: int | None = None
    inflight: int = 0
    held: int = 0
    last_activity: float | None = None
    since: float | None = None
    version: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentReport:
        try:
            state = AgentState(str(data.get("state")))
        except ValueError:
            state = AgentState.UNREACHABLE
        return cls(
            state=state,
            level=data.get("level"),
            inflight=int(data.get("inflight") or 0),
            held=int(data.get("held") or 0),
            last_activity=data.get("last_activity"),
            since=data.get("since"),
            version=data.get("version"),
        )


UNREACHABLE = AgentReport(AgentState.UNREACHABLE)


class AgentClient:
    # Sleep and wake can take minutes on real GPUs (first sleep of a 70B model: ~45 s plus the
    # drain), so transitions get a long read timeout; state polls get a short connect timeout.
    def __init__(self, http: httpx.AsyncClient, transition_timeout: float = 600.0) -> None:
        self._http = http
        self._transition_timeout = transition_timeout

    @staticmethod
    def url(pod_ip: str) -> str:
        return f"http://{pod_ip}:{CONTROL_PORT}"

    async def state(
        self, pod_ip: str, token: str, *, version: int | None = None, wait: float = 0
    ) -> AgentReport:
        params: dict[str, str] = {}
        if version is not None and wait > 0:
            params = {"version": str(version), "wait": str(wait)}
        try:
            resp = await self._http.get(
                f"{self.url(pod_ip)}/state",
                params=params,
                headers=_auth(token),
                timeout=httpx.Timeout(wait + 5.0, connect=2.0),
            )
        except httpx.HTTPError:
            return UNREACHABLE
        if resp.status_code != 200:
            return UNREACHABLE
        return AgentReport.from_json(resp.json())

    async def sleep(self, pod_ip: str, token: str, level: int, drain_timeout: float) -> AgentReport:
        params = {"level": str(level), "drain_timeout": str(drain_timeout)}
        return await self._transition(pod_ip, token, "sleep", params)

    async def wake(self, pod_ip: str, token: str) -> AgentReport:
        return await self._transition(pod_ip, token, "wake", {})

    async def _transition(
        self, pod_ip: str, token: str, what: str, params: dict[str, str]
    ) -> AgentReport:
        try:
            resp = await self._http.post(
                f"{self.url(pod_ip)}/{what}",
                params=params,
                headers=_auth(token),
                timeout=httpx.Timeout(self._transition_timeout, connect=5.0),
            )
        except httpx.HTTPError as e:
            raise AgentError(0, f"{what}: {type(e).__name__}: {e}") from e
        if resp.status_code != 200:
            raise AgentError(resp.status_code, _message(resp))
        return AgentReport.from_json(resp.json())


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(data.get("message") or err or data)[:500]
    return str(data)[:500]
