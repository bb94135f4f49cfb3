"""The Python work of one proxied request, without the kernel: gateway and agent, A/B.

    .venv/bin/python bench/proxy_path_bench.py [--base-tree <worktree>] [--runs 5]
                                               [--requests 4000] [--cpu 1]

Each hop (the gateway's handler, the agent's public proxy) runs in a process of its own with
its h1 server connection and upstream connection on fake transports: a request's bytes go in
by `data_received`, the upstream's answer (an SSE stream as the simulator sends it: head and
first chunk, five chunks, the rest; three reads) comes back by `data_received` on the next
loop turns, and the client's bytes are dropped. No socket, no syscall: what is measured is
the interpreter's and uvloop's work per request (process CPU time over `--requests`
sequential requests, best of five repetitions), the part of the CPU per request a change in
h1, gateway or agent code can move; two_hop_bench.py measures it with the kernel's share on
top. With `--base-tree` (a `git worktree` of another commit) both trees run, interleaved,
`--runs` times each, pinned to `--cpu`; the median per tree is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
_EVENT = (
    b'data: {"id":"chatcmpl-0","object":"chat.completion.chunk","created":1,"model":"bench",'
    b'"choices":[{"index":0,"delta":{"content":"tok"},"logprobs":null,"finish_reason":null}]}'
    b"\n\n"
)
_CHUNKS = [b"%x\r\n%s\r\n" % (len(_EVENT), _EVENT)] * 10 + [
    b"e\r\ndata: [DONE]\n\n\r\n",
    b"0\r\n\r\n",
]
_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\nDate: Mon, 07 Dec 2026 10:50:32 GMT\r\n"
    b"Server: Python/3.11 aiohttp/3.14.5\r\n\r\n"
)
READS = [_HEAD + _CHUNKS[0], b"".join(_CHUNKS[1:6]), b"".join(_CHUNKS[6:])]
_BODY = b'{"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.10.2:8000\r\nUser-Agent: bench\r\n"
    b"Accept: */*\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
    % (len(_BODY), _BODY)
)
UPSTREAM = ("127.0.0.1", 9)  # never dialled: the pool is given a fake connection to it


class ClientTransport:
    """The client's side: drops what the hop writes, notes the end of the response."""

    def __init__(self) -> None:
        self.done: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        if data.endswith(b"0\r\n\r\n") and self.done is not None:
            self.done.set_result(None)

    def writelines(self, data: Any) -> None:
        self.write(b"".join(data))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 5555) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        raise RuntimeError("the hop closed a connection: the bench is not measuring its path")

    abort = close


class UpstreamTransport(ClientTransport):
    """The upstream's side: answers each request with READS, one per loop turn."""

    def __init__(self, conn: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.conn, self.loop = conn, loop

    def write(self, data: bytes) -> None:
        def feed(i: int) -> None:
            self.conn.data_received(READS[i])
            if i + 1 < len(READS):
                self.loop.call_soon(feed, i + 1)

        self.loop.call_soon(feed, 0)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket: the pool's closed-while-idle check reads nothing


async def hop(role: str) -> tuple[Any, Any, Any]:
    """(server, pool, something to keep alive) of a gateway or an agent, not listening."""
    if role == "gateway":
        from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

        source = StaticSource("bench")
        source.add_model("bench", [f"http://{UPSTREAM[0]}:{UPSTREAM[1]}"])
        gateway = Gateway(GatewayConfig(listen_host="127.0.10.2", port=0), source, MemoryDemand())
        await gateway.__aenter__()
        return gateway._server, gateway._pool, gateway
    from vllm_sleep.agent.agent import Agent
    from vllm_sleep.agent.config import AgentConfig
    from vllm_sleep.agent.proxy import PublicProxy
    from vllm_sleep.h1 import UpstreamPool

    argv = ["--upstream", f"http://{UPSTREAM[0]}:{UPSTREAM[1]}"]
    argv += ["--public-port", "0", "--control-port", "0"]
    cfg = AgentConfig.from_cli(argv, {"VLLM_SLEEP_CONTROL_TOKEN": "bench"})
    agent = Agent(cfg)
    agent.gate.open()  # awake: requests pass the gate
    pool = UpstreamPool(connect_timeout=5.0)
    proxy = PublicProxy(cfg, agent.gate, agent.board, agent.metrics, pool, lambda: None)
    return proxy.server(), pool, agent


async def measure(role: str, requests: int, repetitions: int) -> float:
    from vllm_sleep.h1.client import _Conn
    from vllm_sleep.h1.server import _Connection

    loop = asyncio.get_running_loop()
    server, pool, _keep = await hop(role)
    upstream = _Conn(pool, UPSTREAM)
    upstream.connection_made(UpstreamTransport(upstream, loop))  # type: ignore[arg-type]
    pool._all.add(upstream)
    pool.put(upstream)
    conn = _Connection(server, server._handler, server._limits, server._on_reject, server._on_head)
    client = ClientTransport()
    conn.connection_made(client)  # type: ignore[arg-type]

    async def one() -> None:
        client.done = loop.create_future()
        conn.data_received(REQUEST)
        await client.done
        while conn.busy:  # noqa: ASYNC110 (its last step, release and metrics, comes after)
            await asyncio.sleep(0)

    for _ in range(1000):
        await one()
    best = float("inf")
    for _ in range(repetitions):
        gc.collect()
        started = time.process_time()
        for _ in range(requests):
            await one()
        best = min(best, (time.process_time() - started) / requests * 1e6)
    assert pool._idle[UPSTREAM] == [upstream], "the upstream connection was not reused"
    return best


def child(role: str, requests: int) -> None:
    import uvloop

    print(f"{uvloop.run(measure(role, requests, 5)):.2f}", flush=True)


def run(tree: Path, role: str, requests: int, cpu: int | None) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    argv = [sys.executable, __file__, "--child", role, "--requests", str(requests)]
    out = subprocess.run(
        argv,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-tree", type=Path, help="another checkout to compare (a git worktree)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--requests", type=int, default=4000)
    p.add_argument("--cpu", type=int, default=1 if os.cpu_count() and os.cpu_count() > 1 else None)
    p.add_argument("--child", choices=["gateway", "agent"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.requests)
        return 0
    trees = {"current": REPO} | ({"base": args.base_tree} if args.base_tree else {})
    got: dict[tuple[str, str], list[float]] = {}
    print(f"load average {os.getloadavg()}", flush=True)
    for _ in range(args.runs):
        for name, tree in trees.items():
            for role in ("gateway", "agent"):
                got.setdefault((role, name), []).append(run(tree, role, args.requests, args.cpu))
    for (role, name), values in sorted(got.items()):
        shown = ", ".join(f"{v:.1f}" for v in sorted(values))
        median = statistics.median(values)
        print(f"{role:<8} {name:<8} median {median:5.1f} µs/request  ({shown})")
    print(f"load average {os.getloadavg()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
