"""One ModelDeployment's control loop: observe into typed values, plan (pure), apply, repeat.

Run as one loop per ModelDeployment (`runners`), so each model is one actor: its transitions are
serialised per replica by construction, and a slow wake of one model never delays another.
Every decision is in `reconcile.plan`; this module only reads (`observe`) and writes (`apply`).
Sleeps and wakes run as tasks so the loop keeps observing (and reporting) while an agent drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from ..api.agent_protocol import AgentState, StateReport
from ..api.model_deployment import ModelDeployment
from ..api.names import ANNOTATION_DEVICE, LABEL_MODEL, SECRET_TOKEN_KEY, token_secret_name
from ..reconcile.agent_wake import AgentWake
from ..reconcile.builders import Owner, owner_from_body
from ..reconcile.lifecycle import Route, Sleep, Wake
from ..reconcile.node_loss import nodes_to_check
from ..reconcile.observe import memory_patch, observe_pod
from ..reconcile.plan import Observed, Plan, Reported, Transition, plan
from ..reconcile.pod_memo import PodMemo
from ..reconcile.pool_engines import demand_protection_left
from ..reconcile.pool_gate import Gate, PoolRequest
from ..reconcile.status import Status, keep_transition_times
from .agents import AgentError
from .context import Context
from .pools import PoolActor
from .watchers import AgentWatchers

log = logging.getLogger(__name__)

RELIST_SECONDS = 60.0  # heal the pod cache even if a watch event was missed
# While a pooled replica's wake waits (a busy device, a protected neighbour), its loop looks
# again this often: a neighbour's protection that ends (minAwake, fresh demand) is an expiry,
# not an event that kicks anyone, and a missed kick must not cost a whole resync.
WAITING_RECHECK_SECONDS = 1.0
PROTECTION_MARGIN = 0.05  # seconds past the end of a protection before its pass looks again

Emit = Callable[[str, str, str], None]  # (type, reason, message) -> posts a k8s Event
Body = Mapping[str, Any]  # a ModelDeployment as kopf hands it over


class ModelController:
    def __init__(self, ctx: Context, namespace: str, name: str, emit: Emit) -> None:
        self.ctx = ctx
        self.namespace = namespace
        self.name = name
        self.emit = emit
        self.kick = asyncio.Event()  # set by demand, pod changes, agent reports, finished tasks
        self.watchers = AgentWatchers(ctx.agents, self.kick, self._reported)
        self.transitions: dict[str, asyncio.Task[None]] = {}  # pod name -> running sleep/wake
        self.transition_kind: dict[str, Transition] = {}
        self.reported = Reported()  # what Events already said (the plan deduplicates with it)
        self.last_sleep_seconds: float | None = None
        self.last_wake_seconds: float | None = None
        self._token: str | None = None
        self._last_status: Status | None = None
        self._pool_name: str | None = None  # the GPUPool this model last published to
        # For a hand-off (`hand_off`): the last pass's observation, whether a pass is between
        # its plan and the start of its transitions, and the hand-off whose plan is being applied.
        self._observed: Observed | None = None
        self._planning = False
        self._handing_off: asyncio.Task[None] | None = None
        self._hand_off_writes: set[asyncio.Task[None]] = set()  # a hand-off's routes, in flight
        # Pooled transitions whose agent has not reported since the order (`PoolActor.ordering`).
        self._ordering: dict[str, Callable[[], None]] = {}
        self._closing: dict[str, tuple[str, str]] = {}  # pod -> its finished transition's Event
        self._later: set[asyncio.Task[None]] = set()  # Events waiting for the pool's orders
        self._pod_memo = PodMemo()  # the pod manifests its passes compare the pods with

    async def run(self, get_body: Callable[[], Body], stopped: Callable[[], bool]) -> None:
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
            self._leave_pool()
            await self.watchers.close()
            for task in self.transitions.values():
                task.cancel()

    async def _wait(self, seconds: float | None) -> None:
        resync = self.ctx.settings.resync_seconds
        timeout = resync if seconds is None else min(seconds, resync)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.kick.wait(), timeout=max(timeout, 0.05))
        if self._pool_name is not None and self.ctx.pools is not None:
            # The hand-off that kicked this loop may have started a swap's step: its order
            # reaches the agent first (kicks meanwhile are this pass's too).
            await self.ctx.pools.get(self._pool_name).delivered()
        self.kick.clear()

    async def reconcile_once(self, body: Body) -> float | None:
        model = self.ctx.parse(body)  # raises a clear error for what the schema could not catch
        owner = owner_from_body(body)
        ensured = await self.ctx.children.ensure(owner)
        if ensured is not None:  # this process's first pass of the model
            if ensured.token is not None:
                self._token = ensured.token
            if ensured.demand is not None:
                self.ctx.signal_demand(self.namespace, self.name, ensured.demand)
        observed = await self.observe(model, owner)
        pool = await self._pool(model, observed)
        waits = False
        if pool is not None:
            while self._handing_off is not None and not self._handing_off.done():
                await asyncio.wait([self._handing_off])  # its transitions start first
            # What a hand-off or a finished transition changed while this pass awaited: the
            # pool must never be told a replica is settled while its transition runs.
            observed = self._refreshed(observed)
            self._observed = observed
            # From here to the plan's end nothing awaits: the pool's gate, the device turns it
            # takes and the plan are one step no other member can interleave with.
            keeper = pool.gatekeeper(
                self.namespace, model, observed.reports, observed.now, observed.demand_at
            )

            def gated(request: PoolRequest) -> Gate:
                nonlocal waits
                g = keeper(request)
                waits = bool(g.waiting or g.queued)
                return g

            observed = replace(observed, gatekeeper=gated)
        the_plan = plan(observed)
        self._planning = True  # until its transitions start: a hand-off would plan them again
        try:
            await self.apply(the_plan, model)
        finally:
            self._planning = False
            # After the pods (`Children.ensure`), and whatever their creates did: a replica
            # whose pod is refused (quota, a webhook) must not keep a serving one's Service away.
            self.ctx.children.ensure_service(
                owner, model, lambda why: self.emit("Warning", "ServiceFailed", why)
            )
        next_in = the_plan.next_check_in
        if pool is not None:
            # Fresh demand is published as a held request at an awake replica: publish again
            # once it is stale (a neighbour's wake may wait for this replica's eviction).
            left = demand_protection_left(observed.demand_at, observed.now)
            if left is not None:
                left += PROTECTION_MARGIN
                next_in = left if next_in is None else min(next_in, left)
        if waits:
            return (
                WAITING_RECHECK_SECONDS
                if next_in is None
                else min(next_in, WAITING_RECHECK_SECONDS)
            )
        return next_in

    def _refreshed(self, observed: Observed) -> Observed:
        """The observation with what changes without an API read brought up to now: the pods
        (the watch-fed cache), the agents' reports, the running transitions, the demand."""
        pods = [observe_pod(p) for p in self.ctx.pods.get(self.namespace, self.name)]
        return replace(
            observed,
            pods=pods,
            reports={p.name: self.watchers.report(p) for p in pods},
            transitions=dict(self.transition_kind),
            now=time.time(),
            demand_at=self.ctx.demand.get((self.namespace, self.name)),
            reported=self.reported,
            last_sleep_seconds=self.last_sleep_seconds,
            last_wake_seconds=self.last_wake_seconds,
        )

    def hand_off(self) -> None:
        """Plan now and start what the pool admits, from the last pass's observation brought
        up to date (`_refreshed`), without waiting for this loop's next pass: the pool calls it
        when this model's step is the next one on a device (a neighbour's wake waits on this
        replica's eviction, or a neighbour's sleep made room for this replica's wake), and a
        pooled replica's finished transition calls it to publish its new state at once.

        Synchronous from the observation to the transitions' tasks, like a pass's plan: the
        same gate takes the same device turns. The readiness gates are written alongside, in
        the background; a plan that creates or deletes pods is carried out in a task instead
        (those writes come first). The status is left to the pass that follows: the loop is
        kicked once the transitions started."""
        try:
            self._hand_off()
            if self._pool_name is not None and self.ctx.pools is not None:
                self.ctx.pools.get(self._pool_name).run_due()  # the step this one made next
        except Exception:  # never into its caller (an agent's watch, the pool): the pass retries
            log.warning("%s/%s: hand-off failed", self.namespace, self.name, exc_info=True)
        finally:
            self.kick.set()

    def _hand_off(self) -> None:
        observed, pools, name = self._observed, self.ctx.pools, self._pool_name
        if observed is None or pools is None or name is None or self._token is None:
            return
        if self._planning or (self._handing_off is not None and not self._handing_off.done()):
            return  # a plan is being carried out: the kicked pass plans again after it
        pool = pools.get(name)
        if pool.spec is None:
            return
        observed = self._refreshed(observed)
        keeper = pool.gatekeeper(
            self.namespace, observed.model, observed.reports, observed.now, observed.demand_at
        )
        the_plan = plan(replace(observed, gatekeeper=keeper))
        if not (the_plan.actions or the_plan.create or the_plan.delete or the_plan.events):
            return
        task_name = f"hand-off {self.namespace}/{self.name}"
        if the_plan.create or the_plan.delete or self.watchers.token_rejected:
            # API writes (or the token's read) come first: the plan is carried out in a task,
            # and the loop's next pass (or hand-off) waits for it before it plans again.
            applying = self.apply(the_plan, observed.model, write_status=False)
            self._handing_off = asyncio.create_task(
                self._hand_off_applied(applying), name=task_name
            )
        else:  # the transitions start now; the writes alongside them run in the background
            writes = asyncio.gather(*self._start(the_plan, self._token, observed.model))
            task = asyncio.create_task(self._hand_off_applied(writes), name=task_name)
            self._hand_off_writes.add(task)
            task.add_done_callback(self._hand_off_writes.discard)

    async def _hand_off_applied(self, applying: Awaitable[Any]) -> None:
        try:
            await applying
        except Exception:  # the kicked pass tries again, and says what failed
            log.warning("%s/%s: hand-off not applied", self.namespace, self.name, exc_info=True)

    def _reported(self, pod: str, report: StateReport) -> None:
        """A pooled replica that is not awake holds requests: the wake they wait for (or the
        eviction it needs first) is on their path, so it is handed off now, not planned at
        the loop's next pass. Other reports only kick the loop. Any new report of a replica
        ordered to sleep or wake says its agent has the order (or answered something after it):
        the pool's passes, held back meanwhile, may run."""
        self._ordered(pod)
        if self._pool_name is not None and report.held and report.state != AgentState.AWAKE:
            self.hand_off()

    def _ordered(self, pod: str) -> None:
        told = self._ordering.pop(pod, None)
        if told is not None:
            told()

    async def _pool(self, model: ModelDeployment, observed: Observed) -> PoolActor | None:
        """The model's GPUPool actor (inventory fresh), or None outside a pool."""
        gpu = observed.placement.gpu
        name = model.spec.placement.pool
        pools = self.ctx.pools
        if pools is None or gpu is None or gpu.pool is None or not name:
            self._leave_pool()
            return None
        if self._pool_name != name:
            self._leave_pool()
        actor = pools.get(name)
        await actor.refresh(gpu.pool)
        actor.join(f"{self.namespace}/{self.name}", self.kick, self.hand_off)
        self._pool_name = name
        return actor

    def _leave_pool(self) -> None:
        if self._pool_name is not None and self.ctx.pools is not None:
            self.ctx.pools.get(self._pool_name).leave(f"{self.namespace}/{self.name}")
        self._pool_name = None

    async def observe(self, model: ModelDeployment, owner: Owner) -> Observed:
        pods = [observe_pod(p) for p in await self._pods()]
        reports = {p.name: self.watchers.report(p) for p in pods}
        suspects = nodes_to_check(pods, reports, time.time(), self.ctx.settings.node_lost_seconds)
        return Observed(
            model=model,
            owner=owner,
            agent_image=self.ctx.settings.agent_image,
            placement=await self.ctx.children.placement(model),
            pods=pods,
            reports=reports,
            nodes=await self.ctx.nodes.health(
                self.ctx.kube.get_node, suspects, time.monotonic(), self.ctx.kube.list_nodes
            ),
            now=time.time(),
            demand_at=self.ctx.demand.get((self.namespace, self.name)),
            transitions=dict(self.transition_kind),
            reported=self.reported,
            start_up_beside=self.ctx.pools.start_up_beside if self.ctx.pools else None,
            last_sleep_seconds=self.last_sleep_seconds,
            last_wake_seconds=self.last_wake_seconds,
            name_refusal=self.ctx.names.refusal(self.namespace, self.name),
            node_lost_seconds=self.ctx.settings.node_lost_seconds,
            pod_memo=self._pod_memo,
        )

    async def apply(
        self, the_plan: Plan, model: ModelDeployment, *, write_status: bool = True
    ) -> None:
        """Carry the plan out, in order; decides nothing."""
        kube = self.ctx.kube
        for gone in the_plan.delete:
            log.info("deleting pod %s/%s: %s", self.namespace, gone.name, gone.why)
            await kube.delete_pod(self.namespace, gone.name, gone.uid, force=gone.force)
        for new in the_plan.create:
            await self._ensure_claim(new.manifest)
            if await kube.create_if_missing(new.manifest):
                log.info("created pod %s/%s", self.namespace, new.name)
        token = await self._control_token()
        try:
            writes = self._start(the_plan, token, model)
        finally:
            self._planning = False
        await asyncio.gather(*writes)
        if write_status:
            await self._write_status(the_plan.status, superseded=the_plan.starts_transitions)

    def _start(
        self, the_plan: Plan, token: str, model: ModelDeployment
    ) -> list[asyncio.Task[None]]:
        """Post the plan's Events and start its transitions (tasks of their own) and its
        writes alongside them; the writes' tasks, for the caller to await. Synchronous."""
        for event in the_plan.events:
            self._emit_after_orders(event.type, event.reason, event.message)
        self.reported = the_plan.reported
        self.watchers.sync(the_plan.watch, token)
        if the_plan.actions:
            log.info("%s/%s: %s", self.namespace, self.name, the_plan.actions)
        # Readiness gates are written alongside the transitions, not before them: the agent
        # holds every request that reaches a replica that is not awake (docs/agent.md), so the
        # gate only steers the gateway, and an eviction is on the waking model's request path.
        writes = [
            asyncio.create_task(self._route(a)) for a in the_plan.actions if isinstance(a, Route)
        ]
        writes += [asyncio.create_task(self._agent_woke(w, model)) for w in the_plan.agent_wakes]
        for action in the_plan.actions:
            if not isinstance(action, Route):
                self._execute(action, the_plan.watch.get(action.pod), token, model)
        return writes

    async def _route(self, action: Route) -> None:
        reason = "EngineAwake" if action.routed else "EngineNotAwake"
        await self._after_orders()
        await self.ctx.kube.set_routed(self.namespace, action.pod, action.routed, reason)

    async def _after_orders(self) -> None:
        """In a pool, an API write (a readiness gate, a transition's memory, an Event) waits
        until the pool's sleep and wake orders reached their agents (`PoolActor.delivered`):
        each write is CPU on the event loop, and a swap's next order is on a request's path."""
        if self._pool_name is not None and self.ctx.pools is not None:
            await self.ctx.pools.get(self._pool_name).delivered()

    def _emit_after_orders(self, kind: str, reason: str, message: str) -> None:
        if self._pool_name is None or self.ctx.pools is None:
            self.emit(kind, reason, message)
            return

        async def later() -> None:
            await self._after_orders()
            self.emit(kind, reason, message)

        task = asyncio.create_task(later())
        self._later.add(task)
        task.add_done_callback(self._later.discard)

    def _close(self, pod: str, reason: str, message: str) -> None:
        """A transition's closing Event. In a pool it is posted by `finished`, after the
        hand-off that publishes the result and starts the next step, once that step's order
        reached its agent: posted from here it would run first."""
        if self._pool_name is None or self.ctx.pools is None:
            self.emit("Normal", reason, message)
        else:
            self._closing[pod] = (reason, message)

    async def _ensure_claim(self, manifest: Mapping[str, Any]) -> None:
        """A pod seated under DRA references its device's claim: make sure it exists first."""
        device = ((manifest.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DEVICE)
        claims = (manifest.get("spec") or {}).get("resourceClaims")
        if device and claims and self._pool_name and self.ctx.pools is not None:
            await self.ctx.pools.get(self._pool_name).ensure_claim(self.namespace, device)

    async def _pods(self) -> list[dict[str, Any]]:
        """Pods from the watch-fed cache; one LIST per namespace first and every RELIST_SECONDS."""
        ns = self.namespace
        lister = lambda: self.ctx.kube.list_pods(ns, LABEL_MODEL)  # noqa: E731
        await self.ctx.pods.refresh(ns, lister, RELIST_SECONDS, time.monotonic())
        return self.ctx.pods.get(self.namespace, self.name)

    def _execute(
        self, action: Sleep | Wake, ip: str | None, token: str, model: ModelDeployment
    ) -> None:
        if ip is None or action.pod in self.transitions:  # the plan filters these; a guard
            return
        kind = Transition.SLEEP if isinstance(action, Sleep) else Transition.WAKE
        drain = model.spec.sleep.drain_timeout.total_seconds()
        if self._pool_name is not None and self.ctx.pools is not None:
            # The step may be on a swap's path: the members' passes wait until its agent has
            # the order, i.e. reports anything new (`_reported`), or the call ended.
            self._ordering[action.pod] = self.ctx.pools.get(self._pool_name).ordering()
        coro = (
            self._sleep(action, ip, token, drain)
            if isinstance(action, Sleep)
            else self._wake(action, ip, token, int(model.spec.sleep.level))
        )
        task = asyncio.create_task(coro, name=f"{kind} {self.namespace}/{action.pod}")
        self.transitions[action.pod] = task
        self.transition_kind[action.pod] = kind

        def finished(_task: asyncio.Task[None], pod: str = action.pod) -> None:
            self._ordered(pod)  # ended (or was cancelled) before its agent reported anything
            self.transitions.pop(pod, None)
            self.transition_kind.pop(pod, None)
            # In a pool, its new state is published at once: a neighbour's wake may wait on it.
            if self._pool_name is not None:
                self.hand_off()
            else:
                self.kick.set()
            closing = self._closing.pop(pod, None)
            if closing is not None:
                self._emit_after_orders("Normal", *closing)

        task.add_done_callback(finished)

    async def _sleep(self, action: Sleep, ip: str, token: str, drain_timeout: float) -> None:
        name = action.pod
        started = time.monotonic()
        if action.grant_only:
            # A grant taken back: no sleep happens (409 unless asleep), so none is remembered,
            # counted or told; a refusal means the engine woke since, and the next pass sees it.
            report = await self._order_sleep(action, ip, token, drain_timeout, grant_only=True)
            if report is not None:
                self.watchers.set_report(name, ip, report)
            return
        if action.idle:
            # An idle sleep (timer, pre-warm) is on no request's path, and its agent refuses it
            # (409) while requests run: the sleep is told only once it happened. Its memory is
            # not written: while asleep the agent's report says so and since when, and once
            # woken its report names the wake (`woken_by`), which says the replica slept
            # (`plan.replica_memory`); the wake's own memory is written as before. One pod
            # write less per idle sleep, a pre-warm included (and its watch event for every
            # watcher of the pod).
            report = await self._order_sleep(action, ip, token, drain_timeout)
            if report is None:
                return
            # The sleep's own time, known to the pass that writes the Asleep its agent reports
            # now (one status write, not a second one after the memory's).
            seconds = self.last_sleep_seconds = time.monotonic() - started
        else:
            # A forced sleep (an eviction, the policy, a request) may be on a waking model's
            # request path: the memory (pre-warm done; only demand newer than this moment wakes
            # the replica) is written alongside the agent call. If the operator dies before the
            # write lands, its successor reads the same facts from the agent's report (asleep,
            # and since when: `plan.replica_memory`).
            patch = memory_patch(slept_at=time.time(), prewarmed=True)
            remember = asyncio.create_task(self._remember(name, patch))
            self._emit_after_orders(
                "Normal", "Sleeping", f"{name}: level {action.level} ({action.reason})"
            )
            report = await self._order_sleep(action, ip, token, drain_timeout)
            await remember
            if report is None:
                return
            seconds = self.last_sleep_seconds = time.monotonic() - started
        self.ctx.record_transition(self.namespace, self.name, "sleep", action.level, seconds)
        self.watchers.set_report(name, ip, report)
        why = f" ({action.reason})" if action.idle else ""
        self._close(name, "Slept", f"{name}: asleep at level {action.level} in {seconds:.2f}s{why}")

    async def _order_sleep(
        self, action: Sleep, ip: str, token: str, drain_timeout: float, grant_only: bool = False
    ) -> StateReport | None:
        """The agent's answer to the sleep order, or None when it refused (said by `_failed`).
        Idle and grant-only orders are refused while requests run (`idle=True`)."""
        try:
            return await self.ctx.agents.sleep(
                ip,
                token,
                action.level,
                drain_timeout,
                idle=action.idle or grant_only,
                wake_on_request=action.wake_on_request,
                grant_only=grant_only,
            )
        except AgentError as e:
            self._failed("sleep", action.pod, e)
            return None
        finally:
            self._ordered(action.pod)  # answered: its writes need not wait for a report

    async def _wake(self, action: Wake, ip: str, token: str, level: int) -> None:
        name = action.pod
        started = time.monotonic()
        self._emit_after_orders("Normal", "Waking", f"{name}: {action.reason}")
        # A wake is on a request's path: the memory (when it started; the idle timer counts from
        # it) is written alongside the agent call, not before it.
        remember = asyncio.create_task(self._remember(name, memory_patch(woken_at=time.time())))
        try:
            report = await self.ctx.agents.wake(ip, token)
        except AgentError as e:
            await remember
            self._failed("wake", name, e)
            return
        finally:
            self._ordered(name)  # answered: its writes need not wait for a report
        seconds = time.monotonic() - started
        # Route at once: requests held by the gateway flow as soon as the gate opens.
        await self.ctx.kube.set_routed(self.namespace, name, True, "EngineAwake")
        await remember
        self.ctx.record_transition(
            self.namespace, self.name, "wake", report.level or level, seconds
        )
        self.last_wake_seconds = seconds
        self.watchers.set_report(name, ip, report)
        self._close(name, "Woke", f"{name}: awake in {seconds:.2f}s")

    async def _agent_woke(self, wake: AgentWake, model: ModelDeployment) -> None:
        """A wake its agent ran for a held request (the plan posts the Event): counted as a
        wake, and its start written as the replica's memory."""
        if wake.seconds is not None:
            level = wake.level if wake.level is not None else int(model.spec.sleep.level)
            self.ctx.record_transition(self.namespace, self.name, "wake", level, wake.seconds)
            self.last_wake_seconds = wake.seconds
        await self._remember(wake.pod, memory_patch(woken_at=wake.started))

    async def _remember(self, pod: str, patch: dict[str, str | None]) -> None:
        """Write a transition's memory on its pod. A failed write is logged, not raised: the
        transition itself happened, and the next pass reads the same facts from the agent's
        report (`plan.replica_memory`) until a later write lands."""
        await self._after_orders()
        try:
            await self.ctx.kube.annotate_pod(self.namespace, pod, patch)
        except Exception:
            log.warning("%s/%s: memory annotation not written", self.namespace, pod, exc_info=True)

    def _failed(self, what: str, pod: str, e: AgentError) -> None:
        # 409: a transition already runs (e.g. started before an operator restart), or an idle
        # sleep met a request the last report did not show: the agent's next report (it bumps
        # its version when in-flight leaves 0) brings the decision back; nothing failed.
        if e.status == 409:
            return
        if e.status == 401:  # the token was rotated: the next pass reads the Secret again
            self._token = None
        self.ctx.metrics.transitions.labels(self.namespace, self.name, what, "error").inc()
        reason = "DrainTimeout" if e.status == 504 else f"{what.capitalize()}Failed"
        self.emit("Warning", reason, f"{pod}: {e.message}")

    async def _control_token(self) -> str:
        if self.watchers.token_rejected:  # an agent refused it: the Secret was rotated
            self.watchers.token_rejected = False
            self._token = None
        if self._token is None:
            self._token = await self.ctx.kube.read_secret_key(
                self.namespace, token_secret_name(self.name), SECRET_TOKEN_KEY
            )
        if self._token is None:
            raise RuntimeError(f"control token Secret {token_secret_name(self.name)} is missing")
        return self._token

    async def _write_status(self, status: Status, *, superseded: bool = False) -> None:
        """`superseded`: the pass that computed it started a sleep or wake, which changes it
        (the next pass's status says so): written only if nothing follows within the window."""
        status = keep_transition_times(status, self._last_status)
        if status == self._last_status:
            return
        await self.ctx.kube.patch_model_status(
            self.namespace, self.name, status, superseded=superseded
        )
        self._last_status = status
        self.ctx.set_phase(self.namespace, self.name, str(status.get("phase")))
