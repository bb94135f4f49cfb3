"""The sim-kubelet writes a pod's status once for the changes of one relist period, as kubelet
does (not once per container step), and reads the API's answers without the generated models."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from vllm_sleep.testing.kubelet import rawapi
from vllm_sleep.testing.kubelet.kubelet import status_batch
from vllm_sleep.testing.kubelet.pods import PodWorker

POD: dict[str, Any] = {
    "metadata": {"namespace": "ns", "name": "p", "uid": "u"},
    "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
}


async def test_changes_within_a_relist_period_make_one_status_write() -> None:
    writes: list[dict[str, Any]] = []

    async def write(_pod: dict[str, Any], status: dict[str, Any]) -> None:
        writes.append(status)

    worker = PodWorker(
        POD,
        "127.10.0.2",
        None,
        write,
        None,
        None,
        None,
        lambda: "t",
        status_batch=1.0,  # type: ignore[arg-type]
    )
    loop = asyncio.create_task(worker._status_loop())
    a, b = worker.view.containers
    for step in (lambda: setattr(a, "running", True), lambda: setattr(b, "running", True)):
        step()
        worker._dirty.set()
        for _ in range(5):  # the loop runs: without a batch, each step is a write
            await asyncio.sleep(0)
    for _ in range(100):
        if writes:
            break
        await asyncio.sleep(0.05)
    loop.cancel()
    assert len(writes) == 1
    assert [c["started"] for c in writes[0]["containerStatuses"]] == [True, True]


def test_the_batch_is_a_relist_period_on_the_simulation_clock() -> None:
    assert status_batch(1.0) == 1.0
    assert status_batch(0.05) == pytest.approx(0.05)
    assert status_batch(10.0) == 1.0


class FakeContent:
    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def iter_any(self):  # type: ignore[no-untyped-def]
        for c in self._chunks:
            yield c


class FakeResponse:
    def __init__(self, status: int, chunks: list[bytes] = (), body: str = "") -> None:  # type: ignore[assignment]
        self.status = status
        self.content = FakeContent(list(chunks))
        self._body = body
        self.released = False

    async def __aenter__(self) -> FakeResponse:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.released = True

    async def text(self) -> str:
        return self._body

    async def json(self) -> Any:
        import json

        return json.loads(self._body)


async def answer(resp: FakeResponse) -> FakeResponse:
    return resp


async def test_watch_events_are_split_on_lines_across_chunks() -> None:
    resp = FakeResponse(
        200, [b'{"type": "ADDED", "object": {"a"', b': 1}}\n{"type": "DEL', b'ETED", "object": {}}']
    )
    events = [e async for e in rawapi.watch_events(answer(resp))]
    assert [e["type"] for e in events] == ["ADDED", "DELETED"]
    assert events[0]["object"] == {"a": 1}
    assert resp.released


async def test_errors_raise_with_their_status_and_404_can_be_absent() -> None:
    assert await rawapi.send(answer(FakeResponse(404)), absent_ok=True) is False
    assert await rawapi.read(answer(FakeResponse(404)), absent_ok=True) is None
    assert await rawapi.read(answer(FakeResponse(200, body='{"data": {}}'))) == {"data": {}}
    with pytest.raises(ApiException) as e:
        await rawapi.send(answer(FakeResponse(404)))
    assert e.value.status == 404
    with pytest.raises(ApiException) as e:
        await rawapi.read(answer(FakeResponse(500, body="boom")))
    assert e.value.status == 500
