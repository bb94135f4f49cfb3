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


@pytest.mark.parametrize(
    ("status", "seen"),
    [
        (b"000", (502, b'{"error": "UpstreamError"}')),
        # 600-999 are not HTTP's either, but they end like any response: passed on as they are.
        (b"999", (999, b"hi")),
    ],
)
async def test_what_the_client_gets_for_a_status_outside_http(
    status: bytes, seen: tuple[int, bytes]
) -> None:
    async with (
        Upstream(answering(b"HTTP/1.1 %s Odd\r\ncontent-length: 2\r\n\r\nhi" % status)) as up,
        pooled() as pool,
        serving(Relay(pool, up.port)) as (_, port),
        connect(port) as w,
    ):
        await w.send(post("/v1/x", b"{}"))
        r = await w.response()
        assert (r.status, r.body) == seen
