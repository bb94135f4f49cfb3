"""One ModelDeployment's control loop: observe the agents, decide (pure), act, report.

Run as a kopf daemon per ModelDeployment, so each model is one actor: its transitions are
serialised per replica by construction, and a slow wake of one model never delays another.
Transitions run as tasks so the loop keeps observing (and reporting) while an agent drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ..api.agent_protocol import TRANSITIONING, AgentState, StateReport
from ..api.names import (
    ANNOTATION_SLEEP_REQUEST,
    LABEL_MODEL,
    SECRET_TOKEN_KEY,
    token_secret_name,
)
from ..reconcile.lifecycle import (
    Decision,
    ReplicaObservation,
    Route,
    Sleep,
    Wake,
    decide,
)
from .agents import AgentError
from .context import Context
from .kube import parse_time
from .memory import memory_from_pod, memory_patch
from .podstate import engine_failure
from .status import model_status
from .watchers import AgentWatchers

log = logging.getLogger(__name__)

SLEEP_REQUEST_ANNOTATION = ANNOTATION_SLEEP_REQUEST  # set by `vllm-sleep sleep NAME`

RELIST_SECONDS = 60.0  # heal the pod cache even if a watch event was missed

Emit = Callable[[str, str, str], None]  # (type, reason, message) -> posts a k8s Event


class ModelController:
    def __init__(self, ctx: Context, namespace: str, name: str, emit: Emit) -> None:
        self.ctx = ctx
        self.namespace = namespace
        self.name = name
        self.emit = emit
        self.kick = asyncio.Event()  # set by demand, pod changes, agent reports, finished tasks
        self.watchers = AgentWatchers(ctx.agents, self.kick)
        self.transitions: dict[str, asyncio.Task[None]] = {}  # pod name -> running sleep/wake
        self.transition_kind: dict[str, str] = {}  # pod name -> "sleep" | "wake"
        self._reported_restarts: dict[str, int] = {}  # pod -> restart count already in an Event
        self._token: str | None = None
        self._last_status: dict[str, Any] | None = None

    async def run(
        self, get_body: Callable[[], dict[str, Any]], stopped: Callable[[], bool]
    ) -> None:
        try:
            while not stopped():
                body = get_body()
                try:
                    log.debug("%s/%s: reconcile pass", self.namespace, self.name)
                    next_in = await self.reconcile_once(body)
                    log.debug("%s/%s: next pass in %s s", self.namespace, self.name, next_in)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # never let one bad pass kill the model's actor
                    log.exception("reconcile of %s/%s failed", self.namespace, self.name)
                    self.ctx.metrics.reconcile_errors.labels(self.namespace, self.name).inc()
                    self.emit("Warning", "ReconcileError", f"{type(e).__name__}: {e}")
                    next_in = 5.0
                await self._wait(next_in)
        finally:
            await self.watchers.close()
            for task in self.transitions.values():
                task.cancel()

    async def _wait(self, seconds: float | None) -> None:
        timeout = (
            self.ctx.settings.resync_seconds
            if seconds is None
            else min(seconds, self.ctx.settings.resync_seconds)
        )
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.kick.wait(), timeout=max(timeout, 0.05))
        self.kick.clear()

    async def reconcile_once(self, body: dict[str, Any]) -> float | None:
        model = self.ctx.parse(body)  # raises a clear error for what the schema could not catch
        children = await self.ctx.children.ensure(body, model)
        pods = await self._pods()
        gpu, problem = await self.ctx.children.placement(model)
        children = {**children, "problem": problem} if problem else children
        if gpu is not None:
            pods = await self.ctx.children.converge_pods(body, model, pods, gpu)
        if problem and problem != self._last_problem:
            self.emit("Warning", "CannotPlace", problem)
        self._last_problem = problem
        token = await self._control_token()
        self.watchers.sync(pods, token)
        now = time.time()
        observations = [self._observe(p) for p in pods]
        memory = {p["metadata"]["name"]: memory_from_pod(p, self.watchers.report(p)) for p in pods}
        demand = self.ctx.demand.get((self.namespace, self.name))
        policy = self.ctx.policy(model)
        self._drain_timeout = self.ctx.drain_timeout(model)
        annotations = body["metadata"].get("annotations") or {}
        sleep_request = parse_time(annotations.get(SLEEP_REQUEST_ANNOTATION))
        decision: Decision = decide(policy, observations, memory, demand, now, sleep_request)
        by_name = {p["metadata"]["name"]: p for p in pods}
        if decision.actions:
            log.info("%s/%s: %s", self.namespace, self.name, decision.actions)
        for action in decision.actions:
            await self._execute(action, by_name[action.pod], token, policy.level)
        facts = dict(children)
        if self.last_sleep_seconds is not None:
            facts["lastSleepSeconds"] = self.last_sleep_seconds
        if self.last_wake_seconds is not None:
            facts["lastWakeSeconds"] = self.last_wake_seconds
        status = model_status(body, model, pods, observations, self._reports(pods), now, facts)
        await self._write_status(status)
        return decision.next_check_in

    async def _pods(self) -> list[dict[str, Any]]:
        """Pods from the watch-fed cache; a LIST on the first pass and every RELIST_SECONDS."""
        now = time.monotonic()
        if self._listed_at is None or now - self._listed_at > RELIST_SECONDS:
            listed = await self.ctx.kube.list_pods(self.namespace, f"{LABEL_MODEL}={self.name}")
            self.ctx.pods.replace(self.namespace, self.name, listed)
            self._listed_at = now
        return self.ctx.pods.get(self.namespace, self.name)

    def _reports(self, pods: list[dict[str, Any]]) -> dict[str, StateReport]:
        return {p["metadata"]["name"]: self.watchers.report(p) for p in pods}

    def _observe(self, pod: dict[str, Any]) -> ReplicaObservation:
        name = pod["metadata"]["name"]
        report = self.watchers.report(pod)
        state = report.state
        failure = engine_failure(pod)
        if failure is not None and state in (
            AgentState.UNREACHABLE,
            AgentState.LOADING,
            AgentState.FAILED,
        ):
            state = AgentState.FAILED
            if self._reported_restarts.get(name) != failure.restarts:
                self._reported_restarts[name] = failure.restarts
                self.emit("Warning", "EngineFailed", f"{name}: {failure.reason}")
        kind = self.transition_kind.get(name)
        if kind is not None and state not in TRANSITIONING:
            # Our own request is in flight and the agent's report predates it (or its end).
            if kind == "sleep" and state == AgentState.AWAKE:
                state = AgentState.SLEEPING
            elif kind == "wake" and state == AgentState.ASLEEP:
                state = AgentState.WAKING
        return ReplicaObservation(
            pod=name,
            agent=state,
            routed=_routed(pod),
            inflight=report.inflight,
            held=report.held,
            last_activity=report.last_activity,
            deleting=bool(pod["metadata"].get("deletionTimestamp")),
        )

    async def _execute(
        self, action: Route | Sleep | Wake, pod: dict[str, Any], token: str, level: int
    ) -> None:
        name = pod["metadata"]["name"]
        if isinstance(action, Route):
            reason = "EngineAwake" if action.routed else "EngineNotAwake"
            await self.ctx.kube.set_routed(self.namespace, name, action.routed, reason)
            return
        if name in self.transitions:
            return
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            return
        coro = (
            self._sleep(pod, ip, token, action)
            if isinstance(action, Sleep)
            else self._wake(pod, ip, token, level, action)
        )
        task = asyncio.create_task(
            coro, name=f"{action.__class__.__name__.lower()} {self.namespace}/{name}"
        )
        self.transitions[name] = task
        self.transition_kind[name] = "sleep" if isinstance(action, Sleep) else "wake"

        def finished(_task: asyncio.Task[None], pod: str = name) -> None:
            self.transitions.pop(pod, None)
            self.transition_kind.pop(pod, None)
            self.kick.set()

        task.add_done_callback(finished)

    async def _sleep(self, pod: dict[str, Any], ip: str, token: str, action: Sleep) -> None:
        name = pod["metadata"]["name"]
        started = time.monotonic()
        # Memory first, action second: if the operator dies mid-sleep, its successor knows the
        # pre-warm happened and that only demand newer than this moment should wake the replica.
        await self.ctx.kube.annotate_pod(
            self.namespace, name, memory_patch(slept_at=time.time(), prewarmed=True)
        )
        self.emit("Normal", "Sleeping", f"{name}: level {action.level} ({action.reason})")
        try:
            report = await self.ctx.agents.sleep(ip, token, action.level, self._drain_timeout)
        except AgentError as e:
            self._failed("sleep", name, e)
            return
        seconds = time.monotonic() - started
        self.ctx.record_transition(self.namespace, self.name, "sleep", action.level, seconds)
        self.last_sleep_seconds = seconds
        self.watchers.set_report(name, report)
        self.emit("Normal", "Slept", f"{name}: asleep at level {action.level} in {seconds:.2f}s")

    async def _wake(
        self, pod: dict[str, Any], ip: str, token: str, level: int, action: Wake
    ) -> None:
        name = pod["metadata"]["name"]
        started = time.monotonic()
        self.emit("Normal", "Waking", f"{name}: {action.reason}")
        # A wake is on a request's path: the memory (when it started; the idle timer counts from
        # it) is written alongside the agent call, not before it.
        remember = asyncio.create_task(
            self.ctx.kube.annotate_pod(self.namespace, name, memory_patch(woken_at=time.time()))
        )
        try:
            report = await self.ctx.agents.wake(ip, token)
        except AgentError as e:
            await remember
            self._failed("wake", name, e)
            return
        seconds = time.monotonic() - started
        # Route at once: requests held by the gateway flow as soon as the gate opens.
        await self.ctx.kube.set_routed(self.namespace, name, True, "EngineAwake")
        await remember
        self.ctx.record_transition(
            self.namespace, self.name, "wake", report.level or level, seconds
        )
        self.last_wake_seconds = seconds
        self.watchers.set_report(name, report)
        self.emit("Normal", "Woke", f"{name}: awake in {seconds:.2f}s")

    def _failed(self, what: str, pod: str, e: AgentError) -> None:
        if e.status == 409:  # a transition already runs (e.g. started before an operator restart)
            return
        self.ctx.metrics.transitions.labels(self.namespace, self.name, what, "error").inc()
        reason = "DrainTimeout" if e.status == 504 else f"{what.capitalize()}Failed"
        self.emit("Warning", reason, f"{pod}: {e.message}")

    async def _control_token(self) -> str:
        if self._token is None:
            self._token = await self.ctx.kube.read_secret_key(
                self.namespace, token_secret_name(self.name), SECRET_TOKEN_KEY
            )
        if self._token is None:
            raise RuntimeError(f"control token Secret {token_secret_name(self.name)} is missing")
        return self._token

    async def _write_status(self, status: dict[str, Any]) -> None:
        if status == self._last_status:
            return
        await self.ctx.kube.patch_model_status(self.namespace, self.name, status)
        self._last_status = status
        self.ctx.set_phase(self.namespace, self.name, str(status.get("phase")))

    _drain_timeout: float = 120.0
    _last_problem: str | None = None
    _listed_at: float | None = None
    last_sleep_seconds: float | None = None
    last_wake_seconds: float | None = None


def _routed(pod: dict[str, Any]) -> bool:
    from ..api.names import CONDITION_AWAKE

    for c in pod.get("status", {}).get("conditions") or []:
        if c.get("type") == CONDITION_AWAKE:
            return bool(c.get("status") == "True")
    return False
