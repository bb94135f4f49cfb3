"""The client's bounded engine drain, the KV-only tier's release, the sleep-failure kinds and
the sleep report line."""

from __future__ import annotations

import httpx
import pytest

from vllm_sleep.vllm import (
    Features,
    VLLMClient,
    VLLMHTTPError,
    VLLMTimeout,
    VLLMUnreachable,
    VLLMUnsupported,
    VLLMVersion,
    parse_sleep_report,
)

GiB = 1 << 30


def client_for(handler: httpx.MockTransport) -> VLLMClient:
    return VLLMClient("http://v", http=httpx.AsyncClient(transport=handler))


def answering(version: str, **paths: httpx.Response | Exception) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": version})
        answer = paths.get(request.url.path.strip("/"), httpx.Response(200))
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("version", "races"),
    [("0.16.0", False), ("0.17.0", True), ("0.27.3", True), ("0.28.0", False), ("0.34.0", False)],
)
def test_the_unsynchronised_sleep_versions(version: str, races: bool) -> None:
    assert Features(VLLMVersion.parse(version)).sleep_races_running_kernels is races
    assert not Features(None).sleep_races_running_kernels  # level 0 would discard on ≤0.16


async def test_drain_is_a_level_0_wait_pause_and_true_when_answered() -> None:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": "0.27.0"})
        return httpx.Response(200)

    async with client_for(httpx.MockTransport(handle)) as c:
        assert await c.drain(2.0) is True
    (req,) = [r for r in seen if r.url.path == "/sleep"]
    assert req.url.params.multi_items() == [("level", "0"), ("mode", "wait")]
    assert req.extensions["timeout"]["read"] == 2.0  # the bound, not the 900 s transition timeout


async def test_drain_false_when_requests_outlast_the_bound() -> None:
    timeout = httpx.ReadTimeout("slow")
    async with client_for(answering("0.27.0", sleep=timeout)) as c:
        assert await c.drain(0.1) is False


async def test_drain_errors_other_than_the_bound_raise() -> None:
    async with client_for(answering("0.27.0", sleep=httpx.ConnectError("refused"))) as c:
        with pytest.raises(VLLMUnreachable) as info:
            await c.drain(1.0)
    assert not isinstance(info.value, VLLMTimeout)
    async with client_for(answering("0.16.0")) as c:
        with pytest.raises(VLLMUnsupported):
            await c.drain(1.0)  # ≤0.16 reads level 0 as "discard everything"


async def test_timeouts_are_their_own_kind_of_unreachable() -> None:
    async with client_for(answering("0.33.0", is_sleeping=httpx.ReadTimeout("x"))) as c:
        with pytest.raises(VLLMTimeout):
            await c.is_sleeping()


@pytest.mark.parametrize(("version", "allowed"), [("0.30.0", False), ("0.31.0", True)])
async def test_release_kv_cache_memory_needs_0_31(version: str, allowed: bool) -> None:
    seen: list[str] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.method + " " + request.url.path)
        if request.url.path == "/version":
            return httpx.Response(200, json={"version": version})
        return httpx.Response(200, json={"status": "kv_cache_released"})

    async with client_for(httpx.MockTransport(handle)) as c:
        if allowed:
            await c.release_kv_cache_memory()
        else:
            with pytest.raises(VLLMUnsupported):
                await c.release_kv_cache_memory()
    assert ("POST /release_kv_cache_memory" in seen) is allowed


def test_sleep_failure_kinds() -> None:
    body = '{"error":{"message":"Call to `sleep` method failed: AssertionError: Memory usage increased after sleeping."}}'
    assert VLLMHTTPError("/sleep", 500, body).memory_increased
    assert not VLLMHTTPError("/sleep", 500, body).opaque
    assert VLLMHTTPError("/sleep", 500, "").opaque  # ≤0.17 hides the cause
    assert VLLMHTTPError("/sleep", 500, "Internal Server Error").opaque
    assert not VLLMHTTPError("/sleep", 400, "").opaque
    assert not VLLMHTTPError("/sleep", 500, '{"error":"CUDA OOM"}').memory_increased


def test_sleep_report_line() -> None:
    log = (
        "INFO 12-07 05:00:01 [gpu_worker.py:120] Sleep mode freed 14.50 GiB memory, "
        "31.25 GiB memory is still in use.\nINFO other line\n"
    )
    report = parse_sleep_report(log)
    assert report is not None
    assert (report.freed_bytes, report.in_use_bytes, report.lines) == (
        round(14.5 * GiB),
        round(31.25 * GiB),
        1,
    )
    tp2 = log + log.replace("14.50", "14.00").replace("31.25", "40.00")
    both = parse_sleep_report(tp2)
    assert both is not None and both.lines == 2
    assert both.freed_bytes == round(28.5 * GiB) and both.in_use_bytes == 40 * GiB
    assert parse_sleep_report("Sleep mode freed a lot") is None
