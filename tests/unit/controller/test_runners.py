"""One control loop per ModelDeployment, started and stopped by the object's own events, with
no finalizer on the object (controller/runners.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from vllm_sleep.api.names import LEGACY_FINALIZER
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

    _ctx, _changed, registry = registered()
    assert not registry._spawning.get_all_handlers()
    assert not any(h.requires_finalizer for h in registry._changing.get_all_handlers())


class FinalizerKube:
    def __init__(self) -> None:
        self.removed: list[tuple[str, str, str, list[str], str]] = []
        self.model_status = None

    async def remove_finalizer(
        self, namespace: str, name: str, finalizer: str, finalizers: list[str], version: str
    ) -> None:
        self.removed.append((namespace, name, finalizer, finalizers, version))


async def test_a_finalizer_an_earlier_operator_left_is_removed() -> None:
    from test_handlers import registered

    ctx, changed, _registry = registered()
    kube = FinalizerKube()
    kube.model_status = ctx.kube.model_status  # type: ignore[assignment]
    ctx.kube = kube  # type: ignore[assignment]
    body = md(finalizers=["other/keep", LEGACY_FINALIZER], resourceVersion="7")
    event = {"type": "MODIFIED", "object": body}
    await changed(name="m", namespace="ns", type="MODIFIED", body=kopf.Body(body), event=event)
    await settle()
    assert kube.removed == [("ns", "m", LEGACY_FINALIZER, ["other/keep", LEGACY_FINALIZER], "7")]
    plain = md(finalizers=["other/keep"])
    event = {"type": "MODIFIED", "object": plain}
    await changed(name="m", namespace="ns", type="MODIFIED", body=kopf.Body(plain), event=event)
    await settle()
    assert len(kube.removed) == 1
