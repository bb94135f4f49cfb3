"""Adversarial probes of the request path, beyond the abuse and fuzz suites: smuggling and
framing between the gateway, the pod agent and vLLM, request-line versions, pipelining behind
a held request, upgrades, path tricks and API keys at the gateway, hop-by-hop headers, HTTP/1.0
keep-alive. Held requests and clients that leave: test_probe_request_path_hold.py; hostile
pods and bounds across the hops: test_probe_request_path_upstream.py.

The oracle is the engine: a legacy (<=0.16) simulated vLLM, which records a violation (and
dies) when a request reaches it asleep, behind a recording proxy that lists every request the
agent forwarded for a client (`Tap`, a raw pipe that parses what passes: the agent's own calls
are left out). Every attack is sent as exact bytes over a raw socket, on 127.0.52.x. A probe
that finds the product holding is a regression test; docs/security.md lists what is covered.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
from vllm_sleep.http_common import MAX_HEAD_BYTES

from .request_path_rig import (
    CHAT,
    GATEWAY,
    Conn,
    Pod,
    get,
    gw_addr,
    post,
    roundtrip,
    until,
)
from .request_path_rig import gateway as gateway  # the fixtures
from .request_path_rig import pod as pod

pytestmark = [pytest.mark.contract, pytest.mark.timeout(60)]


# -- pipelining -------------------------------------------------------------------------------


async def test_a_request_pipelined_behind_a_held_one_waits_its_turn_and_never_meets_the_sleep(
    pod: Pod,
) -> None:
    """Two inference requests and a dev route on one connection while the engine sleeps: the
    second is not even read until the first is answered (one held, not two), the dev route
    is 404 in its turn, and after the wake both inference requests run on the awake engine."""
    await pod.sleep()
    conn = await Conn.open(*pod.public)
    await conn.send(
        post("/v1/chat/completions")
        + post("/v1/completions", b'{"model":"m","prompt":"a","max_tokens":2}')
        + post("/wake_up", b"")
        + post("/v1/chat/completions")
    )
    await until(lambda: pod.agent.gate.held == 1)
    await asyncio.sleep(0.2)  # room for a wrongly concurrent second request to be held too
    assert pod.agent.gate.held == 1 and pod.forwarded() == []
    await pod.wake()
    answers = await conn.answers(4)
    conn.close()
    assert [a.status for a in answers] == [200, 200, 404, 200], answers
    assert answers[2].error()["code"] == "not_found"
    assert [c.split("?")[0] for c in pod.forwarded()] == [
        "POST /v1/chat/completions",
        "POST /v1/completions",
        "POST /v1/chat/completions",
    ]
    pod.assert_engine_safe()


async def test_a_pipeline_longer_than_a_head_behind_a_held_request_is_answered_whole(
    pod: Pod,
) -> None:
    """What a client pipelines behind a held request is read ahead only up to a head's
    worth; the rest waits in the kernel. All of it is answered, in order, after the wake."""
    await pod.sleep()
    padding = "X-Pad: " + "p" * 2048
    n = (MAX_HEAD_BYTES // 2048) + 8
    conn = await Conn.open(*pod.public)
    await conn.send(post("/v1/chat/completions"))
    await until(lambda: pod.agent.gate.held == 1)
    for i in range(n):  # one read each, mostly: read ahead, unparsed, past the bound
        await conn.send(get(f"/health?n={i}", padding))
        await asyncio.sleep(0.001)
    await conn.send(post("/v1/chat/completions"))
    await pod.wake()
    answers = await conn.answers(n + 2)
    conn.close()
    assert [a.status for a in answers] == [200] * (n + 2)
    health = [f"GET /health?n={i}" for i in range(n)]
    assert pod.forwarded() == ["POST /v1/chat/completions", *health, "POST /v1/chat/completions"]
    pod.assert_engine_safe()


@pytest.mark.parametrize(
    ("method", "target", "status"),
    [("POST", "/sleep?level=1", 404), ("POST", "/collective_rpc", 404), ("PUT", "/v1/models", 405)],
)
async def test_a_route_outside_the_table_is_refused_before_its_body_is_read(
    pod: Pod, method: str, target: str, status: int
) -> None:
    """Answered from the head: no `100 Continue` invites the body, and nothing is buffered
    for a request that can only be refused (the gateway's rule, at the agent too)."""
    conn = await Conn.open(*pod.public)
    head = f"{method} {target} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
    await conn.send(head.encode() + b"Content-Length: %d\r\n\r\n" % (16 << 20))
    await conn.send(b"{" * (1 << 16))  # a client that does not wait for 100 Continue
    answer = await conn.answer()
    assert answer.status == status, answer
    answer.error()
    assert pod.budget() == 0
    conn.close()
    assert pod.forwarded() == []


async def test_dev_routes_pipelined_after_allowed_requests_are_refused_in_turn(pod: Pod) -> None:
    """Each pipelined request is judged on its own; one refused from its head (a dev route
    with a body) is answered in its turn and ends the connection, so what follows it never
    runs."""
    conn = await Conn.open(*pod.public)
    await conn.send(
        get("/health")
        + post("/sleep?level=1", b"")
        + post("/v1/chat/completions")
        + get("/is_sleeping")
        + post("/v1/chat/completions")
        + post("/collective_rpc", b'{"method":"sleep"}')
        + post("/v1/chat/completions")
    )
    answers = await conn.answers(7)
    assert await conn.is_closed()
    assert [a.status for a in answers] == [200, 404, 200, 404, 200, 404], answers
    assert answers[-1].headers.get("connection") == "close"
    assert pod.forwarded() == [
        "GET /health",
        "POST /v1/chat/completions",
        "POST /v1/chat/completions",
    ]
    assert pod.engine.state == "awake"
    pod.assert_engine_safe()


# -- framing: one reading at every hop --------------------------------------------------------

_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
_SMUGGLED = post("/v1/chat/completions")  # what a desynchronised hop would run as a second request


def _chunked(body: bytes, size_line: bytes | None = None) -> bytes:
    return (size_line or b"%x" % len(body)) + b"\r\n" + body + b"\r\n0\r\n\r\n"


# Requests whose framing two parsers could read differently (RFC 9112 §6.3, §11.2): each is
# refused whole, with the connection, so the bytes after it never pass for a request.
AMBIGUOUS = {
    "cl-and-te": _HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-and-cl": _HEAD + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "te-obs-fold": _HEAD + b"Transfer-Encoding:\r\n chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "obs-fold-hiding-te": _HEAD
    + b"X: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
    "te-vertical-tab": _HEAD + b"Transfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": _HEAD + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "cl-space-before-colon": _HEAD + b"Content-Length : 5\r\n\r\n0\r\n\r\n",
    "te-chunked-then-identity": _HEAD + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-twice": _HEAD
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te-empty-second": _HEAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n0\r\n\r\n",
    "te-xchunked": _HEAD + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-in-http10": b"POST /v1/chat/completions HTTP/1.0\r\nHost: x\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "cl-twice-differing": _HEAD + b"Content-Length: 0\r\nContent-Length: 5\r\n\r\n",
    "cl-list": _HEAD + b"Content-Length: 5, 5\r\n\r\n",
    "cl-plus-sign": _HEAD + b"Content-Length: +5\r\n\r\n",
    "cl-overflow": _HEAD + b"Content-Length: 184467440737095516160\r\n\r\n",
    "chunk-size-overflow": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(b"{}", b"1" + b"0" * 16 + b"2"),
    "chunk-size-0x": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"{}", b"0x2"),
    "chunk-size-space": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + _chunked(b"{}", b"2 "),
    "chunk-ext-bare-lf": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n2;a\n{}\r\n0\r\n\r\n",
    "chunk-data-overrun": _HEAD + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX\r\n0\r\n\r\n",
    "bare-lf-head": b"POST /v1/chat/completions HTTP/1.1\nHost: x\nContent-Length: 0\n\n",
    "bare-lf-one-line": _HEAD + b"X: y\nContent-Length: 0\r\n\r\n",
    "bare-cr-in-value": _HEAD + b"X: a\rContent-Length: 0\r\n\r\n",
    "nul-in-value": _HEAD + b"X: a\x00b\r\nContent-Length: 0\r\n\r\n",
    "space-in-target": b"POST /v1/chat/completions /sleep HTTP/1.1\r\nHost: x\r\n\r\n",
    "lower-case-version": b"POST /v1/chat/completions http/1.1\r\nHost: x\r\n\r\n",
    "connect-authority-form": b"CONNECT 127.0.0.1:8001 HTTP/1.1\r\nHost: 127.0.0.1:8001\r\n\r\n",
    "h2c-upgrade": _HEAD + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\nContent-Length: 0\r\n\r\n",
    "websocket-upgrade": _HEAD + b"Connection: upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Content-Length: 0\r\n\r\n",
    "http2-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "trailer-claiming-framing": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n",
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(AMBIGUOUS))
async def test_ambiguous_framing_is_refused_and_nothing_behind_it_runs(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(AMBIGUOUS[case] + _SMUGGLED)
    answers = await conn.answers(2)
    assert await conn.is_closed()
    assert len(answers) == 1, answers
    assert answers[0].status in (400, 501), answers[0]
    answers[0].error()
    assert pod.forwarded() == []
    # ... and the port keeps serving.
    ok = await roundtrip(addr, post("/v1/chat/completions", CHAT, "Connection: close"))
    assert ok.status == 200, ok
    pod.assert_engine_safe()


# Unusual but valid framings of the same body: every hop reads exactly CHAT, and what follows
# is the next request, judged on its own (a dev route: 404).
VALID = {
    "te-capitalised": _HEAD + b"Transfer-Encoding: Chunked\r\n\r\n" + _chunked(CHAT),
    "te-padded": _HEAD + b"Transfer-Encoding:\tchunked  \r\n\r\n" + _chunked(CHAT),
    "chunk-extensions": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b'%x;a=b;q="x y"\r\n' % len(CHAT)
    + CHAT
    + b"\r\n0;end\r\n\r\n",
    "chunk-size-leading-zeros": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(CHAT, b"%020x" % len(CHAT)),
    "one-byte-chunks": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"1\r\n%c\r\n" % c for c in CHAT)
    + b"0\r\n\r\n",
    "trailers": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + _chunked(CHAT)[:-2]
    + b"X-Forwarded-For: 6.6.6.6\r\nHost: 127.0.0.1:8001\r\n\r\n",
    "cl-leading-zeros": _HEAD + b"Content-Length: %08d\r\n\r\n" % len(CHAT) + CHAT,
    "duplicate-host": _HEAD
    + b"Host: 127.0.0.1:8001\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
    "absolute-form-to-loopback": b"POST http://127.0.0.1:8001/v1/chat/completions HTTP/1.1\r\n"
    b"Host: 127.0.0.1:8001\r\nContent-Length: %d\r\n\r\n" % len(CHAT) + CHAT,
    "upgrade-without-connection-upgrade": _HEAD
    + b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    + b"Content-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
    "expect-100-continue": _HEAD
    + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
    + CHAT,
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(VALID))
async def test_valid_but_unusual_framing_is_read_alike_at_every_hop(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(VALID[case] + post("/sleep?level=1", b"") + post("/wake_up", b""))
    answers = await conn.answers(3)
    conn.close()
    assert [a.status for a in answers[:3]] == [200, 404, 404], answers
    assert json.loads(answers[0].body)["choices"], answers[0]
    assert pod.forwarded() == ["POST /v1/chat/completions"]
    assert pod.engine.state == "awake"
    pod.assert_engine_safe()


HOSTILE_HEADERS = (
    b"Host: evil.example\r\n"
    b"Host: 127.0.0.1:8002\r\n"
    b"Connection: keep-alive, X-Secret, HTTP2-Settings, Content-Type-Override\r\n"
    b"X-Secret: for-this-hop-only\r\n"
    b"Content-Type-Override: x\r\n"
    b"Keep-Alive: timeout=600\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Late\r\n"
    b"Proxy-Authorization: Basic c2VjcmV0\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Upgrade: h2c\r\n"
    b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"Content-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_vllm_gets_one_clean_head_whatever_the_client_sent(
    pod: Pod, gateway: Gateway, hop: str
) -> None:
    """Hop-by-hop fields (and those the client named in Connection) stop at the first hop;
    vLLM gets exactly one Host (its own), one Content-Length (the body's), no transfer coding,
    no trailer turned into a header, and X-Forwarded-For extended by each hop."""
    tap = pod.tap
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    body = b"%x;ext=1\r\n%s\r\n0\r\nX-Late: t\r\nAuthorization: Bearer smuggled\r\n\r\n" % (
        len(CHAT),
        CHAT,
    )
    answer = await roundtrip(
        addr, b"POST /v1/chat/completions HTTP/1.1\r\n" + HOSTILE_HEADERS + body
    )
    assert answer.status == 200, answer
    [seen] = tap.client_requests()
    assert seen.line == b"POST /v1/chat/completions HTTP/1.1"
    assert seen.all(b"host") == [tap.url.removeprefix("http://").encode()]
    assert seen.all(b"content-length") == [b"%d" % len(CHAT)] and seen.body == CHAT
    for name in (
        b"transfer-encoding",
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"proxy-authorization",
        b"proxy-connection",
        b"upgrade",
        b"http2-settings",
        b"x-secret",
        b"content-type-override",
        b"x-late",
        b"authorization",
    ):
        assert seen.all(name) == [], (name, seen.headers)
    assert seen.all(b"content-type") == [b"application/json"]
    [xff] = seen.all(b"x-forwarded-for")
    hops = xff.split(b", ")
    assert hops[0] == b"6.6.6.6" and len(hops) == (2 if hop == "agent" else 3), xff


# Request lines llhttp accepts but no HTTP/1.1 client sends: a request line without a version
# (HTTP/0.9, whose answer has no status line), an explicit 0.9, and HTTP/2.0 as text.
OTHER_VERSIONS = {
    "http09-get": b"GET /health\r\n\r\n",
    "http09-with-headers": b"GET /v1/models\r\nHost: x\r\n\r\n",
    "http09-post": b"POST /v1/chat/completions\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT),
    "explicit-0.9": b"GET /health HTTP/0.9\r\nHost: x\r\n\r\n",
    "text-http2": post("/v1/chat/completions", version="2.0"),
}


@pytest.mark.parametrize("hop", ["agent", "gateway"])
@pytest.mark.parametrize("case", sorted(OTHER_VERSIONS))
async def test_requests_in_other_http_versions_are_refused(
    pod: Pod, gateway: Gateway, hop: str, case: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    await conn.send(OTHER_VERSIONS[case])
    answer = await conn.answer()
    assert answer.status == 400, answer
    assert "not supported" in str(answer.error()["message"])
    assert await conn.is_closed()
    assert pod.forwarded() == []


# Request targets that are no path (asterisk-form), or name another port (absolute-form): each
# is judged by its path alone, refused in OpenAI's shape, and the connection goes on serving.
ODD_TARGETS = [
    "OPTIONS *",
    "GET *",
    "GET http://127.0.0.1:{control}/state",
    "POST http://127.0.0.1:{control}/sleep?level=1",
    "GET http://127.0.0.1:8001/is_sleeping",
]


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_odd_request_targets_are_judged_by_their_path(
    pod: Pod, gateway: Gateway, hop: str
) -> None:
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    for line in ODD_TARGETS:
        await conn.send(
            f"{line.format(control=pod.control[1])} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        )
        answer = await conn.answer()
        assert answer.status in (404, 405), (line, answer)
        answer.error()
    await conn.send(post("/v1/chat/completions"))
    assert (await conn.answer()).status == 200
    conn.close()
    assert pod.forwarded() == ["POST /v1/chat/completions"]
    assert pod.agent.board.state.value == "awake"


# -- API keys at the gateway ------------------------------------------------------------------

KEY = "probe-key"


def _keyed(*headers: str, body: bytes = CHAT, target: str = "/v1/chat/completions") -> bytes:
    return post(target, body, *headers, "Connection: close")


# (request, status): the key is read from the first Authorization header field of the head,
# never from a trailer, the query or the target; it opens nothing but the routes.
KEY_CASES = {
    "no-key": (_keyed(), 401),
    "key": (_keyed(f"Authorization: Bearer {KEY}"), 200),
    "scheme-in-any-case": (_keyed(f"authorization: bEaReR   {KEY}  "), 200),
    "wrong-key-first": (
        _keyed("Authorization: Bearer nope", f"Authorization: Bearer {KEY}"),
        401,
    ),
    "right-key-first": (
        _keyed(f"Authorization: Bearer {KEY}", "Authorization: Bearer nope"),
        200,
    ),
    "key-named-hop-by-hop": (
        _keyed(f"Authorization: Bearer {KEY}", "Connection: authorization"),
        200,
    ),
    "key-in-trailer": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Transfer-Encoding: chunked\r\n\r\n"
        + _chunked(CHAT)[:-2]
        + f"Authorization: Bearer {KEY}\r\n\r\n".encode(),
        401,
    ),
    "key-in-query": (_keyed(target=f"/v1/chat/completions?api_key={KEY}"), 401),
    "key-in-proxy-authorization": (_keyed(f"Proxy-Authorization: Bearer {KEY}"), 401),
    "key-as-basic": (_keyed(f"Authorization: Basic {KEY}"), 401),
    "absolute-form-no-key": (
        b"POST http://127.0.0.1/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT), CHAT),
        401,
    ),
    "dev-route-with-key": (_keyed(f"Authorization: Bearer {KEY}", target="/sleep"), 404),
    "encoded-route-no-key": (_keyed(target="/v1%2Fchat%2Fcompletions"), 404),
}


async def test_the_api_key_is_read_from_the_head_only_and_never_reaches_vllm(
    pod: Pod, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(KEY + "\n")
    source = StaticSource("team")
    source.add_model("m", [pod.agent.public_url])
    config = GatewayConfig(listen_host=GATEWAY, port=0, api_keys_file=str(keys))
    async with Gateway(config, source, MemoryDemand()) as gw:
        for case, (raw, status) in KEY_CASES.items():
            answer = await roundtrip(gw_addr(gw), raw)
            assert answer.status == status, (case, answer)
            if status != 200:
                answer.error()
    admitted = sum(status == 200 for _, status in KEY_CASES.values())
    assert pod.forwarded() == ["POST /v1/chat/completions"] * admitted
    for seen in pod.tap.client_requests():
        assert seen.all(b"authorization") == [] and seen.all(b"proxy-authorization") == []


# -- path tricks at the gateway ---------------------------------------------------------------

# Each is either refused (404/405/400, OpenAI's shape) or, when it is the chat route itself,
# forwarded to the table's path: nothing else, and nothing to the agent's control port.
GATEWAY_TARGETS = [
    "/v1/chat%2Fcompletions",
    "/v1%2Fchat%2Fcompletions",
    "/%761/chat/completions",
    "/v1/chat/completions;x=1",
    "/v1/chat/completions;/../../sleep",
    "/v1/chat/completions/",
    "//v1/chat/completions",
    "/v1//chat/completions",
    "/v1/./chat/completions",
    "/v1/x/../chat/completions",
    "/v1\\chat\\completions",
    "/V1/CHAT/COMPLETIONS",
    "/v1/chat/completions%00",
    "/v1/chat/completions%20",
    "/v1/chat/completions/..%2f..%2fsleep",
    "/v1/chat/completions/../../sleep",
    "/v1/../sleep",
    "/sleep",
    "/wake_up",
    "/collective_rpc",
    "/state",
    "/wake",
    "/metrics/../sleep",
    "/healthz/../wake_up",
    "/v1/models/../../collective_rpc",
    "/v1/responses/../../sleep",
    "/v1/responses/%2e%2e%2fsleep",
    "*",
    "http://127.0.0.1:{control}/sleep?level=1",
    "http://127.0.0.1:{control}/v1/chat/completions",
    "http://127.0.0.1:8001/sleep",
    "/v1/chat/completions?/../../sleep",
    "/v1/chat/completions?x=1#/../../sleep",
    "/v1/chat/completions#/../../sleep",
    "/v1/chat/completions??level=1",
]


async def test_no_gateway_target_reaches_more_than_the_chat_route(
    pod: Pod, gateway: Gateway
) -> None:
    control = pod.control[1]
    for target in GATEWAY_TARGETS:
        raw = post(target.format(control=control), CHAT, "Connection: close")
        answer = await roundtrip(gw_addr(gateway), raw)
        if answer.status == 200:
            seen = pod.tap.client_requests()[-1].line.split(b" ")[1]
            assert seen.split(b"?")[0] == b"/v1/chat/completions", (target, seen)
        else:
            assert answer.status in (400, 404, 405), (target, answer)
            assert answer.error()["message"], target
    assert {line.split("?")[0] for line in pod.forwarded()} <= {"POST /v1/chat/completions"}
    assert pod.agent.board.state.value == "awake" and pod.engine.state == "awake"
    pod.assert_engine_safe()


# -- HTTP/1.0 keep-alive ----------------------------------------------------------------------


@pytest.mark.parametrize("hop", ["agent", "gateway"])
async def test_http10_keep_alive_is_served_and_a_close_delimited_answer_ends_the_connection(
    pod: Pod, gateway: Gateway, hop: str
) -> None:
    """HTTP/1.0 with keep-alive: plain answers keep the connection (they say so); a streamed
    answer has no length for a 1.0 client, so the close ends it, and a request pipelined
    behind it never runs."""
    addr = pod.public if hop == "agent" else gw_addr(gateway)
    conn = await Conn.open(*addr)
    alive = "Connection: keep-alive"
    await conn.send(post("/v1/chat/completions", CHAT, alive, version="1.0"))
    first = await conn.answer()
    assert first.status == 200 and first.headers.get("connection") == "keep-alive", first
    stream = b'{"model":"m","prompt":"a","max_tokens":3,"stream":true}'
    await conn.send(
        post("/v1/completions", stream, alive, version="1.0")
        + post("/v1/chat/completions", CHAT, alive, version="1.0")
    )
    answers = await conn.answers(3)
    assert [a.status for a in answers] == [200, 200], answers
    assert answers[1].body.rstrip().endswith(b"data: [DONE]") and conn.closed
    assert pod.forwarded() == ["POST /v1/chat/completions", "POST /v1/completions"]
