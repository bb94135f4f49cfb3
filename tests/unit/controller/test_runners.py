"""One control loop per ModelDeployment, started and stopped by the object's own events, with
no finalizer on the object (controller/runners.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from vllm_sleep.controller.runners import Key, ModelRunners


def md(name: str = "m", uid: str = "u1", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"namespace": "ns", "name": name, "uid": uid, **meta},
        "spec": {"model": "x"},
    }


class Loops:
    """A stand-in for the model controller's loop: records what it saw, ends when stopped
    (after `linger` seconds more, to stand for a pass that is still running)."""

    def __init__(self, linger: float = 0.0, fail_first: int = 0) -> None:
        self.started: list[tuple[str, str, str]] = []  # (ns, name, uid)
        self.ended: list[str] = []
        self.bodies: dict[str, Callable[[], Mapping[str, Any]]] = {}
        self.kicked: list[Key] = []
        self.linger = linger
        self.fail_first = fail_first

    async def run(
        self,
        namespace: str,
        name: str,
        get_body: Callable[[], Mapping[str, Any]],
        stopped: Callable[[], bool],
    ) -> None:
        uid = get_body()["metadata"]["uid"]
        self.started.append((namespace, name, uid))
        self.bodies[uid] = get_body
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("a bug in a pass")
        try:
            while not stopped():  # noqa: ASYNC110  (a plain flag, as the real loop reads it)
                await asyncio.sleep(0.01)
            await asyncio.sleep(self.linger)
        finally:
            self.ended.append(uid)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_the_first_event_starts_the_loop_later_ones_feed_it_the_latest_body() -> None:
    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append)
    runners.observe(None, md())  # the watch's initial listing
    runners.observe("MODIFIED", md(labels={"a": "1"}))
    await settle()
    assert loops.started == [("ns", "m", "u1")]
    runners.observe("MODIFIED", md(labels={"a": "2"}))
    assert loops.bodies["u1"]()["metadata"]["labels"] == {"a": "2"}
    await runners.close()
    assert loops.ended == ["u1"]


async def test_a_deletion_stops_the_loop_at_once() -> None:
    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append)
    runners.observe("ADDED", md())
    await settle()
    runners.observe("MODIFIED", md(deletionTimestamp="2026-12-07T00:00:00Z"))
    assert ("ns", "m") not in runners and loops.kicked == [("ns", "m")]
    await asyncio.wait_for(runners.close(), timeout=10)
    assert loops.ended == ["u1"]
    runners.observe("DELETED", md())  # the last event of it: nothing more to stop
    assert ("ns", "m") not in runners


async def test_a_loop_that_does_not_end_within_the_grace_is_cancelled() -> None:
    loops = Loops(linger=3600)
    runners = ModelRunners(loops.run, loops.kicked.append, grace=0.05)
    runners.observe("ADDED", md())
    await settle()
    runners.observe("DELETED", md())
    await asyncio.wait_for(runners.close(), timeout=10)
    assert loops.ended == ["u1"]  # its finally ran: cancelled


async def test_a_model_made_again_under_its_name_gets_a_new_loop() -> None:
    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append)
    runners.observe("ADDED", md(uid="u1"))
    await settle()
    runners.observe("ADDED", md(uid="u2"))  # its DELETED was missed (a watch gap)
    await settle()
    await asyncio.sleep(0.05)
    assert [s[2] for s in loops.started] == ["u1", "u2"]
    assert loops.ended == ["u1"]
    await runners.close()
    assert loops.ended == ["u1", "u2"]


async def test_a_loop_that_dies_of_an_error_is_restarted() -> None:
    loops = Loops(fail_first=1)
    runners = ModelRunners(loops.run, loops.kicked.append, restart=0.01)
    runners.observe("ADDED", md())
    for _ in range(100):
        await asyncio.sleep(0.01)
        if len(loops.started) == 2:
            break
    assert len(loops.started) == 2
    await runners.close()


async def test_the_operator_puts_no_finalizer_on_a_model() -> None:
    # kopf adds its finalizer to objects of daemons and of non-optional deletion handlers: a
    # PATCH per model at its start and its end, and a deletion that hangs without the operator.
    from test_handlers import registered

    _ctx, _changed, registry, runners = registered()
    assert not registry._spawning.get_all_handlers()
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())
    await runners.close()


async def test_kopf_itself_removes_the_finalizer_an_earlier_build_left() -> None:
    # Builds with a kopf daemon per model left kopf's finalizer on every ModelDeployment; with
    # no handler needing one, kopf's processing of the object's next event removes it.
    import logging

    from kopf._cogs.configs import configuration
    from kopf._cogs.structs import bodies, patches, references
    from kopf._core.actions import lifecycles
    from kopf._core.engines import indexing
    from kopf._core.reactor import inventory, processing
    from test_handlers import registered

    _ctx, _changed, registry, runners = registered()
    finalizer = configuration.OperatorSettings().persistence.finalizer
    assert finalizer == "kopf.zalando.org/KopfFinalizerMarker"  # what earlier builds wrote
    raw = md(finalizers=[finalizer], resourceVersion="5")
    body = bodies.Body(raw)
    patch = patches.Patch(body=body)
    memory = await inventory.ResourceMemories().recall(raw)
    log = logging.getLogger(__name__)
    await processing.process_resource_causes(
        lifecycle=lifecycles.all_at_once,
        indexers=indexing.OperatorIndexers(),
        registry=registry,
        settings=configuration.OperatorSettings(),
        resource=references.Resource(
            group="vllm-sleep.io", version="v1alpha1", plural="modeldeployments", namespaced=True
        ),
        raw_event={"type": "MODIFIED", "object": raw},
        body=body,
        patch=patch,
        memory=memory,
        local_logger=log,  # type: ignore[arg-type]
        event_logger=log,  # type: ignore[arg-type]
        stream_pressure=None,
        operator_paused=None,
        consistency_time=None,
    )
    assert patch.as_json_patch() == [{"op": "remove", "path": "/metadata/finalizers"}]
    await runners.close()


async def test_a_late_deleted_of_the_old_object_does_not_stop_the_new_one() -> None:
    # kopf works per uid: the new object's first event may come before the old one's DELETED.
    ended: list[Key] = []
    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append, ended=ended.append)
    runners.observe("ADDED", md(uid="u1"))
    await settle()
    runners.observe("ADDED", md(uid="u2"))
    await asyncio.sleep(0.05)
    runners.observe("DELETED", md(uid="u1"))
    await asyncio.sleep(0.05)
    assert ("ns", "m") in runners and loops.ended == ["u1"]
    assert ended == [("ns", "m")]  # once, when u1's loop ended, before u2's started
    await runners.close()
    assert loops.ended == ["u1", "u2"]


async def test_a_models_state_is_dropped_once_its_loop_has_ended() -> None:
    # A pass still running when the DELETED comes would put back what was dropped before it.
    order: list[str] = []
    loops = Loops(linger=0.05)
    runners = ModelRunners(
        loops.run, loops.kicked.append, ended=lambda key: order.append(f"ended {loops.ended}")
    )
    runners.observe("ADDED", md())
    await settle()
    runners.observe("DELETED", md())
    assert order == []  # not while its pass may run
    await asyncio.wait_for(runners.close(), timeout=10)
    assert order == ["ended ['u1']"]


async def test_a_deleted_object_without_a_loop_has_its_state_dropped_at_once() -> None:
    ended: list[Key] = []
    runners = ModelRunners(Loops().run, lambda key: None, ended=ended.append)
    runners.observe("DELETED", md())
    assert ended == [("ns", "m")]


async def test_a_recreated_models_loop_starts_after_the_old_one_ended() -> None:
    events: list[str] = []
    loops = Loops(linger=0.05)

    async def run(ns: str, name: str, get_body: Any, stopped: Any) -> None:
        events.append(f"start {get_body()['metadata']['uid']}")
        await loops.run(ns, name, get_body, stopped)
        events.append(f"end {get_body()['metadata']['uid']}")

    runners = ModelRunners(run, loops.kicked.append, ended=lambda key: events.append("ended"))
    runners.observe("ADDED", md(uid="u1"))
    await settle()
    runners.observe("ADDED", md(uid="u2"))
    await asyncio.sleep(0.2)
    assert events == ["start u1", "end u1", "ended", "start u2"]
    await runners.close()


async def test_a_model_gone_without_an_event_is_found_and_stopped() -> None:
    # A watch gap: kopf's re-list shows only what exists; a status write that finds nothing
    # (404) makes the runners ask.
    now: dict[Key, str | None] = {("ns", "m"): "u1"}

    async def lookup(key: Key) -> str | None:
        return now[key]

    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append, lookup=lookup)
    runners.observe("ADDED", md())
    await settle()
    runners.verify(("ns", "m"))  # still there: nothing happens
    await asyncio.sleep(0.05)
    assert ("ns", "m") in runners
    now[("ns", "m")] = None  # deleted, its DELETED never seen
    runners.verify(("ns", "m"))
    await asyncio.sleep(0.05)
    assert ("ns", "m") not in runners
    await asyncio.wait_for(runners.close(), timeout=10)
    assert loops.ended == ["u1"]


async def test_a_status_write_that_finds_no_object_asks_whether_it_is_gone() -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    from vllm_sleep.controller.coalesce import Coalescer

    async def write(key: Key, value: int) -> None:
        raise ApiException(status=404, reason="not found")

    gone: list[Key] = []
    c: Coalescer[Key, int] = Coalescer(write, window=0.01)
    c.gone = gone.append
    await c.submit(("ns", "m"), 1)
    await asyncio.wait_for(c.drain(), timeout=10)
    assert gone == [("ns", "m")]


async def test_the_operator_wires_a_404_status_write_to_verify_the_model() -> None:
    from test_handlers import registered

    ctx, _changed, registry, runners = registered()
    startup = [
        h.fn
        for h in registry._activities.get_all_handlers()
        if h.fn.__name__ == "watch_for_gone_models"
    ]
    assert len(startup) == 1
    startup[0]()
    assert ctx.kube.model_status.gone == runners.verify
    await runners.close()


async def test_nothing_is_kept_of_a_deleted_models_loop() -> None:
    # A fleet's deleted models, each under a name of its own, must not pile up.
    loops = Loops()
    runners = ModelRunners(loops.run, loops.kicked.append)
    for i in range(20):
        runners.observe("ADDED", md(name=f"m{i}", uid=f"u{i}"))
    await settle()
    for i in range(20):
        runners.observe("DELETED", md(name=f"m{i}", uid=f"u{i}"))
    await asyncio.wait_for(runners.close(), timeout=10)
    await settle()
    assert runners._runners == {} and runners._endings == {} and runners._stopping == set()
