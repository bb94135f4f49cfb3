"""A model's children (Secret, Lease, Service) are created once and read back only when they
were there already: what the operator created it knows (each read is an API request, and at a
thousand models a thousand of them)."""

from __future__ import annotations

import asyncio
from typing import Any

from test_executor import BODY, FakeKube, controller

from vllm_sleep.api.model_deployment import ModelDeployment
from vllm_sleep.controller.children import Children, Ensured
from vllm_sleep.reconcile.builders import owner_from_body


class ExistingKube(FakeKube):
    """An apiserver where some children exist already (an operator restart, a takeover)."""

    def __init__(self, existing: set[str]) -> None:
        super().__init__()
        self.existing = existing
        self.secret_token: dict[str, Any] = {}

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        await super().create_if_missing(manifest)
        if manifest["kind"] == "Secret":
            self.secret_token = manifest["stringData"]
        return manifest["kind"] not in self.existing

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        self.calls.append(("read", "Secret", name))
        return "stored-token"

    async def read_lease_renew_time(self, namespace: str, name: str) -> float | None:
        self.calls.append(("read", "Lease", name))
        return 1234.5


def reads(kube: FakeKube) -> list[str]:
    return [c[1] for c in kube.calls if c[0] == "read"]


async def test_children_it_created_are_not_read_back() -> None:
    kube = ExistingKube(existing=set())
    children = Children(kube)  # type: ignore[arg-type]
    model = ModelDeployment.from_body(BODY)
    ensured = await children.ensure(owner_from_body(BODY))
    assert ensured is not None
    assert ensured.token == next(iter(kube.secret_token.values()))  # the one it chose
    assert ensured.demand is None  # a Lease just created holds no demand
    assert reads(kube) == []
    assert await children.ensure(owner_from_body(BODY)) is None  # once per uid
    children.ensure_service(owner_from_body(BODY), model)
    children.ensure_service(owner_from_body(BODY), model)  # on the way: not twice
    await children.drain()
    children.ensure_service(owner_from_body(BODY), model)  # made: not again
    await children.drain()
    assert [c[1] for c in kube.calls if c[0] == "create"].count("Service") == 1


async def test_children_that_existed_are_read_once() -> None:
    kube = ExistingKube(existing={"Secret", "Lease", "Service"})
    children = Children(kube)  # type: ignore[arg-type]
    ensured = await children.ensure(owner_from_body(BODY))
    assert ensured == Ensured(token="stored-token", demand=1234.5)
    assert sorted(reads(kube)) == ["Lease", "Secret"]


async def test_a_first_pass_uses_the_created_token_and_sees_existing_demand() -> None:
    for existing, token_reads in ((set(), 0), ({"Secret", "Lease"}, 1)):
        kube = ExistingKube(existing)
        ctl, _ = controller(kube)
        await ctl.reconcile_once(BODY)
        await ctl.reconcile_once(BODY)
        assert reads(kube).count("Secret") == token_reads
        assert ctl._token is not None
        demand = ctl.ctx.demand.get(("ns", "m"))
        assert demand == (1234.5 if "Lease" in existing else None)
        await ctl.watchers.close()


async def test_a_first_pass_creates_the_pod_before_the_service() -> None:
    # In a fleet's bring-up every request queued ahead of a pod's create delays its start; the
    # pod needs its Secret, nothing needs the Service first.
    kube = ExistingKube(existing=set())
    ctl, _ = controller(kube)
    await ctl.reconcile_once(BODY)
    await ctl.ctx.children.drain()
    creates = [c[1] for c in kube.calls if c[0] == "create"]
    assert sorted(creates[:2]) == ["Lease", "Secret"]
    assert creates[2:] == ["Pod", "Service"]
    await ctl.watchers.close()


class StuckServiceKube(ExistingKube):
    """An apiserver whose Service create does not answer (its connection is busy elsewhere)."""

    def __init__(self) -> None:
        super().__init__(existing=set())
        self.service_may_go = asyncio.Event()

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Service":
            await self.service_may_go.wait()
        return await super().create_if_missing(manifest)


async def test_a_pass_does_not_wait_for_its_service() -> None:
    # The Service is the least urgent request (lanes.Lane.BACKGROUND): in a fleet's bring-up it
    # waits for every other one, and a pass that waited with it would hold back the pre-warm.
    kube = StuckServiceKube()
    ctl, _ = controller(kube)
    await asyncio.wait_for(ctl.reconcile_once(BODY), timeout=30)
    assert "Service" not in [c[1] for c in kube.calls if c[0] == "create"]
    kube.service_may_go.set()
    await ctl.ctx.children.drain()
    assert "Service" in [c[1] for c in kube.calls if c[0] == "create"]
    await ctl.watchers.close()


class FailingServiceKube(ExistingKube):
    def __init__(self) -> None:
        super().__init__(existing=set())
        self.refusals = 1

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Service" and self.refusals:
            self.refusals -= 1
            raise RuntimeError("apiserver unavailable")
        return await super().create_if_missing(manifest)


async def test_a_failed_service_create_is_tried_again_by_the_next_pass() -> None:
    kube = FailingServiceKube()
    children = Children(kube)  # type: ignore[arg-type]
    model = ModelDeployment.from_body(BODY)
    children.ensure_service(owner_from_body(BODY), model)
    await children.drain()
    assert "Service" not in [c[1] for c in kube.calls if c[0] == "create"]
    children.ensure_service(owner_from_body(BODY), model)
    await children.drain()
    assert [c[1] for c in kube.calls if c[0] == "create"].count("Service") == 1


class RefusedPodKube(ExistingKube):
    """An apiserver that refuses the model's pod (a ResourceQuota, an admission webhook)."""

    async def create_if_missing(self, manifest: dict[str, Any]) -> bool:
        if manifest["kind"] == "Pod":
            raise RuntimeError('pods "m-0" is forbidden: exceeded quota')
        return await super().create_if_missing(manifest)


async def test_a_refused_pod_does_not_keep_the_service_away() -> None:
    kube = RefusedPodKube(existing=set())
    ctl, _ = controller(kube)
    try:
        await ctl.reconcile_once(BODY)
    except RuntimeError:
        pass  # the pass says so (status, Event); the next one tries the pod again
    await ctl.ctx.children.drain()
    creates = [c[1] for c in kube.calls if c[0] == "create"]
    assert "Service" in creates
    await ctl.watchers.close()


async def test_a_model_made_again_under_its_name_gets_its_children_afresh() -> None:
    kube = ExistingKube(existing=set())
    children = Children(kube)  # type: ignore[arg-type]
    model = ModelDeployment.from_body(BODY)
    await children.ensure(owner_from_body(BODY))
    children.ensure_service(owner_from_body(BODY), model)
    await children.drain()
    children.forget("ns", "m")  # DELETED: nothing kept per model it had
    assert not children._ensured and not children._services
    again = {**BODY, "metadata": {**BODY["metadata"], "uid": "uid-new"}}
    assert await children.ensure(owner_from_body(again)) is not None


async def test_a_deleted_models_service_on_the_way_is_not_created() -> None:
    kube = StuckServiceKube()
    children = Children(kube)  # type: ignore[arg-type]
    children.ensure_service(owner_from_body(BODY), ModelDeployment.from_body(BODY))
    await asyncio.sleep(0)  # its create is waiting
    children.forget("ns", "m")
    kube.service_may_go.set()
    await children.drain()
    await asyncio.sleep(0)
    assert "Service" not in [c[1] for c in kube.calls if c[0] == "create"]


async def test_a_refused_service_is_told_once_per_reason() -> None:
    kube = FailingServiceKube()
    kube.refusals = 3
    children = Children(kube)  # type: ignore[arg-type]
    model = ModelDeployment.from_body(BODY)
    said: list[str] = []
    for _ in range(3):  # three passes, the same refusal
        children.ensure_service(owner_from_body(BODY), model, said.append)
        await children.drain()
    assert len(said) == 1 and "apiserver unavailable" in said[0]
    children.ensure_service(owner_from_body(BODY), model, said.append)
    await children.drain()
    assert [c[1] for c in kube.calls if c[0] == "create"].count("Service") == 1
