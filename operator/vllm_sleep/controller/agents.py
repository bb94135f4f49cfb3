"""The operator's client for pod agents' control port (docs/interfaces.md).

The operator never talks to vLLM: only to the agent beside it, on the pod IP (never through a
Service: each replica has its own sleep state), with the model's control token.
"""

from __future__ import annotations

import httpx
from pydantic import ValidationError

from ..api.agent_protocol import (
    MAX_WAIT,
    PARAM_DRAIN_TIMEOUT,
    PARAM_GRANT_ONLY,
    PARAM_LEVEL,
    PARAM_REASON,
    PARAM_VERSION,
    PARAM_WAIT,
    PARAM_WAKE_ON_REQUEST,
    PATH_SLEEP,
    PATH_STATE,
    PATH_WAKE,
    REASON_IDLE,
    UNREACHABLE_REPORT,
    StateReport,
)
from ..api.names import CONTROL_PORT


class AgentError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"agent answered {status}: {message}")
        self.status = status
        self.message = message


UNREACHABLE = UNREACHABLE_REPORT  # what the operator reads from an agent that does not answer


def parse_report(data: object) -> StateReport:
    """An agent's JSON; anything unreadable (e.g. a state this operator does not know) counts as
    no answer, so the operator waits instead of acting on a guess."""
    try:
        return StateReport.model_validate(data)
    except ValidationError:
        return UNREACHABLE


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
    ) -> StateReport:
        params: dict[str, str] = {}
        if version is not None and wait > 0:
            params = {PARAM_VERSION: str(version), PARAM_WAIT: str(min(wait, MAX_WAIT))}
        try:
            resp = await self._http.get(
                f"{self.url(pod_ip)}{PATH_STATE}",
                params=params,
                headers=_auth(token),
                timeout=httpx.Timeout(wait + 5.0, connect=2.0),
            )
        except httpx.HTTPError:
            return UNREACHABLE
        if resp.status_code == 401:  # the caller's token is stale (rotated): it must re-read
            raise AgentError(401, _message(resp))
        if resp.status_code != 200:
            return UNREACHABLE
        try:
            return parse_report(resp.json())
        except ValueError:
            return UNREACHABLE

    async def sleep(
        self,
        pod_ip: str,
        token: str,
        level: int,
        drain_timeout: float,
        *,
        idle: bool = False,
        wake_on_request: bool = False,
        grant_only: bool = False,
    ) -> StateReport:
        params = {PARAM_LEVEL: str(level), PARAM_DRAIN_TIMEOUT: str(drain_timeout)}
        if idle:  # refused (409) by the agent while requests run: its count is exact
            params[PARAM_REASON] = REASON_IDLE
        if wake_on_request:  # the agent may wake it for a held request (the sleep's grant)
            params[PARAM_WAKE_ON_REQUEST] = "1"
        if grant_only:  # only the grant of the sleep in place: 409 unless asleep
            params[PARAM_GRANT_ONLY] = "1"
        return await self._transition(pod_ip, token, PATH_SLEEP, params)

    async def wake(self, pod_ip: str, token: str) -> StateReport:
        return await self._transition(pod_ip, token, PATH_WAKE, {})

    async def _transition(
        self, pod_ip: str, token: str, path: str, params: dict[str, str]
    ) -> StateReport:
        what = path.lstrip("/")
        try:
            resp = await self._http.post(
                f"{self.url(pod_ip)}{path}",
                params=params,
                headers=_auth(token),
                timeout=httpx.Timeout(self._transition_timeout, connect=5.0),
            )
        except httpx.HTTPError as e:
            raise AgentError(0, f"{what}: {type(e).__name__}: {e}") from e
        if resp.status_code != 200:
            raise AgentError(resp.status_code, _message(resp))
        try:
            return parse_report(resp.json())
        except ValueError as e:  # not JSON
            raise AgentError(resp.status_code, f"{what}: unreadable answer: {e}") from e


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
