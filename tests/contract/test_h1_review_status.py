"""h1's upstream pool and response status codes llhttp accepts but HTTP has not.

llhttp takes any three digits as a status. Below 100 there is no HTTP status (RFC 9110 §15):
such an answer is malformed (UpstreamError, 502 at the proxy, connection dropped), never a
response that cannot end (the exchange took status 0 for "no final head yet", so the answer
was spliced, never completed, and the handler waited for ever). The helpers are test_h1's.
"""

from __future__ import annotations

import pytest

from vllm_sleep.h1 import UpstreamError

from .test_h1 import (
    UPSTREAM,
    Relay,
    Upstream,
    answering,
    connect,
    pooled,
    post,
    serving,
    upstream_head,
    wait_for,
)

pytestmark = [pytest.mark.contract, pytest.mark.timeout(30)]


@pytest.mark.parametrize("status", [b"000", b"099", b"001"])
@pytest.mark.parametrize("whole", [False, True])
async def test_a_status_below_100_is_a_malformed_response(status: bytes, whole: bool) -> None:
    answer = b"HTTP/1.1 %s Odd\r\ncontent-length: 2\r\n\r\nhi" % status
    async with Upstream(answering(answer)) as up, pooled(read_timeout=None) as pool:
        with pytest.raises(UpstreamError):
            await pool.request(UPSTREAM, up.port, upstream_head(), b"", whole=whole)
        await wait_for(up.eof)  # the connection is closed, not reused


async def test_a_status_below_100_reaches_the_client_as_502() -> None:
    async with (
        Upstream(answering(b"HTTP/1.1 000 Odd\r\ncontent-length: 2\r\n\r\nhi")) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert r.status == 502 and r.json() == {"error": "UpstreamError"}


async def test_statuses_from_100_to_999_are_not_refused() -> None:
    # 600-999 are not HTTP's either, but they end like any response: passed on as they are.
    async with (
        Upstream(answering(b"HTTP/1.1 999 Odd\r\ncontent-length: 2\r\n\r\nhi")) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert (r.status, r.body) == (999, b"hi")
