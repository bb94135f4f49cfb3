"""Hypothesis fuzz of both agent ports: every bad request gets a clear 4xx, the agent keeps
serving, and the engine sees nothing it should not.

A real Agent in front of a simulated vLLM 0.34 (dev mode on: its `/sleep`, `/wake_up`,
`/collective_rpc`, ... answer anyone who reaches them), with a recording proxy between the two
(`Recorder`: every call that reached the engine). It all runs on one event-loop thread so
hypothesis can drive it synchronously over raw sockets (no client-side normalisation).

Beyond test_agent_allowlist.py (fixed spellings of each blocked route) and test_abuse_agent.py
(one case per finding of issue 13), this composes spellings at random: percent-encoding of any
character in either case, doubled slashes, dot segments through allowed prefixes, `;` params,
absolute-form targets, case changes, encoded slashes, fragments, rewrite headers; on the
control port, token variants, path tricks that dress a protected route as a public one
(`/metrics/../sleep`) and malformed heads; on the public port, malformed framing and bodies
at and past the size bound. After every example both ports still answer, and afterwards the
engine's record holds only allowlisted routes (and the operator's calls the test made itself).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vllm_sleep.agent import Agent, AgentConfig
from vllm_sleep.api.routes import ROUTES as ALLOWED
from vllm_sleep.testing.sim import EngineHost
from vllm_sleep.testing.sim.server import ROUTES as SIM_ROUTES
from vllm_sleep.testing.sim.testkit import start

from .agent_wait import wait_state
from .test_agent_field import Recorder
from .test_gateway_fuzz import LoopThread

pytestmark = [pytest.mark.contract, pytest.mark.timeout(240)]

AGENT_HOST = "127.0.16.1"
ENGINE_HOST = "127.0.16.2"
TOKEN = "fuzz-s3cret-token"
TIMEOUT = 0.5  # the agent's head and body timeouts here
MAX_BODY = 64 << 10
EXAMPLES = 150
# Every engine route the agent must not forward (the simulator serves vLLM 0.34's whole table).
DEV_PATHS = sorted(set(SIM_ROUTES) - set(ALLOWED))
CONTROL_PATHS = ["/sleep", "/wake", "/state"]
PUBLIC = ["/metrics", "/healthz", "/v1/models", "/health", "/v1/chat/completions"]


def fuzz(examples: int) -> settings:
    """Hypothesis settings of every test here: reproducible examples, no deadline (one example
    is several round trips over real sockets)."""
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


class ClientRecorder(Recorder):
    """`calls` holds only what the agent forwarded for a client (it adds X-Forwarded-For); the
    agent's own calls to vLLM (its supervisor's `/is_sleeping`, `/health`) are its job."""

    async def _forward(self, request: web.Request) -> web.Response:
        before = len(self.calls)
        try:
            return await super()._forward(request)
        finally:
            if "X-Forwarded-For" not in request.headers:
                del self.calls[before:]


@dataclass
class Rig:
    agent: Agent
    recorder: Recorder
    engine: Any  # SimEngine

    @property
    def public(self) -> tuple[str, int]:
        assert self.agent.public_port is not None
        return AGENT_HOST, self.agent.public_port

    @property
    def control(self) -> tuple[str, int]:
        assert self.agent.control_port is not None
        return AGENT_HOST, self.agent.control_port


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    lt = LoopThread()
    host = EngineHost(time_scale=0.002)

    async def setup() -> tuple[Rig, Recorder]:
        engine = await start(
            host,
            "m",
            "--enable-sleep-mode",
            "--host",
            ENGINE_HOST,
            env={"VLLM_SIM_PROFILE": "0.34"},
        )
        recorder = ClientRecorder(engine.url)
        await recorder.__aenter__()
        config = AgentConfig(
            listen_host=AGENT_HOST,
            public_port=0,
            control_port=0,
            upstream=recorder.url,
            control_token=TOKEN,
            poll_interval=0.01,
            health_interval=3600,  # no supervisor polls in the record
            header_timeout=TIMEOUT,
            body_timeout=TIMEOUT,
            max_body_bytes=MAX_BODY,
        )
        agent = Agent(config)
        await agent.start()
        await wait_state(agent, "awake")
        return Rig(agent, recorder, engine), recorder

    the_rig, recorder = lt.run(setup())
    try:
        yield the_rig
    finally:
        lt.run(the_rig.agent.stop())
        lt.run(recorder.__aexit__(None, None, None))
        lt.run(host.stop_all())
        lt.close()


# -- raw HTTP ---------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int | None  # None: the connection closed without an answer
    head: bytes
    body: bytes


def exchange(addr: tuple[str, int], raw: bytes, timeout: float = 10) -> Answer:
    """Send `raw` and read one answer (Connection: close is up to `raw`; reads until the
    announced length, or EOF)."""
    with socket.create_connection(addr, timeout=timeout) as s:
        try:
            s.sendall(raw)
        except OSError:
            pass  # the agent may refuse before the whole request is written
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = _content_length(head)
                if length is not None and len(body) >= length:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
    return Answer(status, head, body)


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def request(method: str, target: str, headers: list[str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: pod", "Connection: close", *(headers or [])]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_clear_error(answer: Answer, *allowed: int) -> None:
    """A 4xx in OpenAI's error shape (the agent's own refusals all are)."""
    assert answer.status in allowed, (answer.status, answer.head[:300], answer.body[:300])
    err = json.loads(answer.body)["error"]
    assert isinstance(err, dict) and err.get("message"), answer.body[:300]


def still_serving(rig: Rig) -> None:
    health = exchange(rig.public, request("GET", "/health"))
    assert health.status == 200, health
    state = exchange(rig.control, request("GET", "/state", [f"Authorization: Bearer {TOKEN}"]))
    assert state.status == 200, state
    assert json.loads(state.body)["state"] == "awake"


# -- spellings --------------------------------------------------------------------------------


def _encode_some(draw: st.DrawFn, path: str) -> str:
    """Percent-encode a random subset of characters (either hex case), slashes included."""
    out = []
    for ch in path:
        if draw(st.integers(0, 3)) == 0:
            code = f"%{ord(ch):02x}"
            out.append(code.upper() if draw(st.booleans()) else code)
        else:
            out.append(ch)
    return "".join(out)


def _case(draw: st.DrawFn, path: str) -> str:
    return "".join(c.upper() if draw(st.booleans()) else c for c in path)


@st.composite
def spelled(draw: st.DrawFn, path: str, prefixes: list[str]) -> str:
    """`path` disguised by one to three tricks a careless proxy might fold back onto it."""
    target = path
    for _ in range(draw(st.integers(1, 3))):
        trick = draw(
            st.sampled_from(
                [
                    "encode",
                    "case",
                    "double",
                    "dots",
                    "encoded-dots",
                    "param",
                    "trailing",
                    "absolute",
                    "fragment",
                    "backslash",
                    "nul",
                ]
            )
        )
        prefix = draw(st.sampled_from(prefixes))
        if trick == "encode":
            target = _encode_some(draw, target)
        elif trick == "case":
            target = _case(draw, target)
        elif trick == "double":
            target = "/" + target
        elif trick == "dots":
            target = prefix + "/.." + target
        elif trick == "encoded-dots":
            dots = draw(st.sampled_from(["%2e%2e", "%2E%2E", ".%2e", "..%2f", "..;"]))
            target = prefix + "/" + dots + target
        elif trick == "param":
            target += draw(st.sampled_from([";", ";a=b", ";/", ";jsessionid=1"]))
        elif trick == "trailing":
            target += draw(st.sampled_from(["/", "/.", "//", "%2f"]))
        elif trick == "absolute":
            target = draw(st.sampled_from(["http://pod", "http://127.0.0.1:8001", "//pod"])) + (
                target
            )
        elif trick == "fragment":
            target = prefix + "#" + target
        elif trick == "backslash":
            target = target.replace("/", "\\", 1) if draw(st.booleans()) else "\\" + target
        elif trick == "nul":
            target += "%00"
    return target


REWRITE_HEADERS = [
    [],
    ["X-Original-URL: /sleep"],
    ["X-Rewrite-URL: /collective_rpc"],
    ["X-Forwarded-Prefix: /sleep"],
    ["X-HTTP-Method-Override: POST"],
]


# -- public port ------------------------------------------------------------------------------


@fuzz(EXAMPLES)
@given(
    data=st.data(),
    path=st.sampled_from(DEV_PATHS),
    method=st.sampled_from(["POST", "GET", "PUT", "post", "Post", "OPTIONS"]),
    extra=st.sampled_from(REWRITE_HEADERS),
)
def test_no_spelling_of_a_dev_route_passes_the_public_port(
    rig: Rig, data: st.DataObject, path: str, method: str, extra: list[str]
) -> None:
    target = data.draw(spelled(path, ["/v1", "/health", "/v1/models", "/metrics"]))
    before = len(rig.recorder.calls)
    answer = exchange(rig.public, request(method, target, extra, b"{}"))
    reached = rig.recorder.calls[before:]
    assert all(_allowed(c) for c in reached), (target, reached)
    if reached:  # the disguise fell away to an allowlisted route (`/health#/sleep` is /health)
        return
    # 400: llhttp refuses what is not a request target (a backslash, a bad method); 404: not
    # in the table; 405: a known path with the wrong method.
    assert answer.status in (400, 404, 405), (target, answer.status, answer.body[:200])
    if answer.body:
        assert_clear_error(answer, 400, 404, 405)


MALFORMED = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface
    b"GET /health HTTP/9.9\r\nHost: a\r\n\r\n",
    b"GET  /health HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\r\n folded: header\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHo st: a\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/completions HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST /v1/completions HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    b"GET /health HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n",
    b"GET /" + b"a" * (70 << 10) + b" HTTP/1.1\r\nHost: a\r\n\r\n",
]


@fuzz(60)
@given(
    raw=st.one_of(
        st.sampled_from(MALFORMED),
        st.binary(min_size=1, max_size=200).map(lambda b: b + b"\r\n\r\n"),
        st.binary(min_size=1, max_size=40).map(lambda b: b"GET /h" + b + b" HTTP/1.1\r\n\r\n"),
    )
)
def test_malformed_requests_are_refused_and_the_agent_keeps_serving(rig: Rig, raw: bytes) -> None:
    before = len(rig.recorder.calls)
    answer = exchange(rig.public, raw)
    reached = rig.recorder.calls[before:]
    assert all(_allowed(call) for call in reached), (raw[:80], reached)
    if answer.status is not None and not reached:
        # 501: a transfer coding the agent does not implement (RFC 9112 §6.1).
        assert 400 <= answer.status < 500 or answer.status == 501, (raw[:80], answer.head)
        assert_clear_error(answer, answer.status)
    still_serving(rig)


@fuzz(30)
@given(
    size=st.one_of(st.integers(MAX_BODY - 8, MAX_BODY + 8), st.integers(1, 4 * MAX_BODY)),
    chunked=st.booleans(),
)
def test_bodies_up_to_the_bound_pass_and_past_it_are_413(
    rig: Rig, size: int, chunked: bool
) -> None:
    body = b'{"model":"m","prompt":"' + b"a" * max(0, size - 26) + b'"}'
    body = body[:size] if size < 26 else body
    head = "POST /tokenize HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Type: application/json\r\n"
    if chunked:
        framed = b"".join(
            b"%x\r\n%s\r\n" % (len(piece), piece)
            for piece in (body[i : i + 8192] for i in range(0, len(body), 8192))
        )
        raw = (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed + b"0\r\n\r\n"
    else:
        raw = (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    before = len(rig.recorder.calls)
    answer = exchange(rig.public, raw)
    if len(body) > MAX_BODY:
        assert_clear_error(answer, 413)
        assert rig.recorder.calls[before:] == []
    else:
        assert answer.status is not None and answer.status != 413, answer.head
        assert rig.recorder.calls[before:] == ["POST /tokenize"]


def test_slow_heads_and_bodies_are_408_and_hold_nothing(rig: Rig) -> None:
    """A head or body sent a byte at a time, slower than the bounds allow, on a few
    connections at once: each is answered 408 (or cut) while ordinary requests keep flowing."""

    def trickle(raw: bytes, out: list[Answer]) -> None:
        with socket.create_connection(rig.public, timeout=10) as s:
            deadline = time.monotonic() + 8 * TIMEOUT
            try:
                for i in range(len(raw)):
                    s.sendall(raw[i : i + 1])
                    time.sleep(TIMEOUT / 4)
                    if time.monotonic() > deadline:
                        break
            except OSError:
                pass
            data = b""
            try:
                while chunk := s.recv(65536):
                    data += chunk
            except OSError:
                pass
            parts = data.split(b" ", 2)
            status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None
            out.append(
                Answer(status, data.partition(b"\r\n\r\n")[0], data.partition(b"\r\n\r\n")[2])
            )

    slow_head = request("GET", "/v1/models", ["X-Pad: " + "p" * 40])
    slow_body = request("POST", "/v1/completions", ["Content-Type: application/json"])
    slow_body = slow_body.replace(b"Content-Length: 0", b"Content-Length: 40") + b"{" * 40
    results: list[Answer] = []
    threads = [
        threading.Thread(target=trickle, args=(raw, results)) for raw in (slow_head, slow_body) * 2
    ]
    for t in threads:
        t.start()
    for _ in range(3):
        still_serving(rig)
    for t in threads:
        t.join(30)
    assert len(results) == 4
    for answer in results:
        assert answer.status in (408, None), answer.head
    assert rig.agent.gate.inflight == 0


# -- control port -----------------------------------------------------------------------------


TOKEN_VARIANTS = st.one_of(
    st.sampled_from(
        [
            "",
            "Bearer",
            "Bearer ",
            f"Basic {TOKEN}",
            f"Token {TOKEN}",
            f"Bearer {TOKEN.upper()}",
            f"Bearer {TOKEN[:-1]}",
            f"Bearer {TOKEN}x",
            f"Bearer x{TOKEN}",
            f"Bearer {TOKEN[:8]}",
            f"Bearer\t{TOKEN[:-1]}",
            f"Bearer {TOKEN}\x00",
            f"Bearer {TOKEN.encode().hex()}",
            f"Bearer,{TOKEN}",
            f"{TOKEN}",
        ]
    ),
    st.text(
        alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\r\n"),
        max_size=60,
    ).map(lambda t: f"Bearer {t}"),
)
PROTECTED = st.sampled_from(CONTROL_PATHS)


@st.composite
def dressed(draw: st.DrawFn) -> str:
    """A protected control route, alone or dressed as a public one (`/metrics/../sleep`)."""
    path = draw(PROTECTED)
    public = draw(st.sampled_from(["/metrics", "/healthz"]))
    form = draw(st.integers(0, 5))
    if form == 0:
        return draw(spelled(path, ["/metrics", "/healthz"]))
    if form == 1:
        return public + "/.." + path
    if form == 2:
        return public + "/%2e%2e" + _encode_some(draw, path)
    if form == 3:
        return public + "?" + path
    if form == 4:
        return public + ";" + path
    return path + "?token=" + TOKEN


@fuzz(EXAMPLES)
@given(
    target=dressed(),
    auth=TOKEN_VARIANTS,
    method=st.sampled_from(["POST", "GET", "post", "PUT"]),
    twice=st.booleans(),
)
def test_the_control_port_refuses_every_wrong_token_and_disguise(
    rig: Rig, target: str, auth: str, method: str, twice: bool
) -> None:
    headers = [f"Authorization: {auth}"] if auth else []
    if twice:  # a second, wrong Authorization header must not help
        headers.append("Authorization: Bearer nope")
    before = len(rig.recorder.calls)
    answer = exchange(rig.control, request(method, target, headers))
    assert answer.status is not None, (target, auth)
    path_only = target.split("?", 1)[0].split(";", 1)[0]
    if answer.status == 200:
        # Only the two public routes answer without the token, with their own bodies.
        assert path_only in ("/metrics", "/healthz") or path_only.lower().endswith(
            ("/metrics", "/healthz")
        ), (target, answer.body[:200])
        assert b'"state"' not in answer.body, (target, answer.body[:200])
    else:
        assert 400 <= answer.status < 500, (target, auth, answer.status)
    assert rig.recorder.calls[before:] == [], (target, auth, rig.recorder.calls[before:])
    assert rig.agent.board.state.value == "awake"


@fuzz(40)
@given(
    raw=st.one_of(
        st.sampled_from([m.replace(b"/health", b"/state") for m in MALFORMED]),
        st.binary(min_size=1, max_size=200).map(lambda b: b + b"\r\n\r\n"),
    )
)
def test_malformed_control_requests_never_act(rig: Rig, raw: bytes) -> None:
    before = len(rig.recorder.calls)
    answer = exchange(rig.control, raw)
    if answer.status is not None:
        assert 400 <= answer.status < 500 or answer.status == 501, (raw[:80], answer.head)
    assert rig.recorder.calls[before:] == []
    still_serving(rig)


def test_the_control_port_bounds_slow_and_idle_connections(rig: Rig) -> None:
    """A control connection must deliver its request head within the head timeout: a client
    that trickles one (or sends nothing) is disconnected, so it cannot pin the operator's
    port. A long-poll answering after that timeout is not cut: the bound is on the head."""
    head = request("GET", "/state", [f"Authorization: Bearer {TOKEN}", "X-Pad: " + "p" * 40])
    with socket.create_connection(rig.control, timeout=10) as s:
        started = time.monotonic()
        cut = False
        try:
            for i in range(len(head)):
                s.sendall(head[i : i + 1])
                time.sleep(TIMEOUT / 5)
                if time.monotonic() - started > 20 * TIMEOUT:
                    break
            cut = s.recv(65536) == b""
        except TimeoutError:
            cut = False
        except OSError:  # reset
            cut = True
        assert cut, "a head trickled slower than the head timeout was still being read"
    with socket.create_connection(rig.control, timeout=10) as s:
        s.settimeout(20 * TIMEOUT)
        try:
            idle = s.recv(1) == b""
        except ConnectionResetError:
            idle = True
        except TimeoutError:
            idle = False
        assert idle, "an idle control connection stayed open"
    version = json.loads(
        exchange(rig.control, request("GET", "/state", [f"Authorization: Bearer {TOKEN}"])).body
    )["version"]
    wait = 3 * TIMEOUT
    poll = exchange(
        rig.control,
        request("GET", f"/state?wait={wait}&version={version}", [f"Authorization: Bearer {TOKEN}"]),
    )
    assert poll.status == 200, poll.head
    still_serving(rig)


def test_afterwards_the_engine_saw_only_allowlisted_routes(rig: Rig) -> None:
    """The record of everything that reached vLLM during this module: allowlisted routes
    only (the control port's callers above never passed its guard), and no violation."""
    still_serving(rig)  # at least one allowlisted call in the record, whatever ran before
    assert "GET /health" in rig.recorder.calls
    assert [c for c in rig.recorder.calls if not _allowed(c)] == []
    assert rig.engine.violations == []


def _allowed(call: str) -> bool:
    method, _, target = call.partition(" ")
    route = ALLOWED.get(target.split("?", 1)[0])
    return route is not None and method in route.methods
