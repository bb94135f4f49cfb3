"""The gateway under issue 13's attacks, two versions side by side: event-loop stall and memory.

    .venv/bin/python bench/abuse_bench.py [--base <git rev>] [--rounds 3]
                                          [--out bench/results/abuse.json]

Each version's gateway runs in its own process (StaticSource, API keys on, default limits) in
front of the SSE upstream of gateway_bench.py; the base revision is checked out into a
temporary `git worktree`. While an attack runs, a probe thread sends `GET /healthz` on a
keep-alive connection every 5 ms and times each answer: the slowest answer is the longest the
gateway's event loop was stalled (plus a loopback round trip), and the gateway's RSS is sampled
at the same time. The attacks:
  - `json_amplification`: an authenticated gzip body of ~25 KiB that inflates to 24 MiB of
    `{"model": ..., "x": [{},{},...]}` (8M empty objects), sent `--rounds` times;
  - `slow_post`: twelve clients without a valid key announce 30 MiB bodies and send them in
    1 MiB pieces, then stall;
  - `one_byte_chunks`: one authenticated chunked body of 1M one-byte chunks.
Results are per version, and current/base ratios (machines are noisy: compare the ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import gateway_bench as gb

REPO = Path(__file__).resolve().parent.parent
HOST = gb.HOSTS["gateway"]
KEY = "bench-key"
MIB = 1 << 20


# -- child role: a gateway with API keys (run with the tree's package on PYTHONPATH) ----------


async def serve_gateway(port: int, upstream: str, keys_file: str) -> None:
    from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

    source = StaticSource("bench")
    source.add_model(gb.MODEL, [upstream])
    cfg = GatewayConfig(listen_host=HOST, port=port, api_keys_file=keys_file)
    async with Gateway(cfg, source, MemoryDemand()):
        print("READY", flush=True)
        await asyncio.Event().wait()


def spawn_gateway(tree: Path, upstream: str, keys_file: str) -> tuple[subprocess.Popen[str], int]:
    port = gb.free_port(HOST)
    env = {**os.environ, "PYTHONPATH": str(tree / "operator")}
    argv = ["--role", "gateway", "--port", str(port), "--upstream", upstream, "--keys", keys_file]
    proc = subprocess.Popen(
        [sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None
    if "READY" not in proc.stdout.readline():
        proc.kill()
        raise RuntimeError(f"the gateway of {tree} did not start")
    return proc, port


# -- measuring: a probe thread (its own socket, outside this process's event loop) ------------


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssPeak(threading.Thread):
    """The gateway's RSS sampled every 2 ms (its own thread: a stalled gateway does not stop
    it, unlike the probe, which waits for each answer)."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._halt = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, rss_bytes(self._pid))
            time.sleep(0.002)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


class Probe(threading.Thread):
    """GET /healthz every 5 ms; the slowest answer while it runs."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self._port = port
        self._halt = threading.Event()
        self.worst = 0.0

    def run(self) -> None:
        request = b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n"
        with socket.create_connection((HOST, self._port)) as sock:
            sock.settimeout(60)
            while not self._halt.is_set():
                started = time.perf_counter()
                sock.sendall(request)
                got = b""
                while not (b"\r\n\r\n" in got and got.endswith(b"}")):
                    data = sock.recv(4096)
                    if not data:
                        return
                    got += data
                self.worst = max(self.worst, time.perf_counter() - started)
                time.sleep(0.005)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)


# -- the attacks ------------------------------------------------------------------------------


def head(length: int | None, *extra: str, key: str | None = KEY) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", "Host: bench"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


async def exchange(port: int, data: bytes) -> None:
    """Send `data`, read until the gateway answers (and closes, or the answer ends)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(data)
        await writer.drain()
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(120):
                while chunk := await reader.read(1 << 16):
                    if chunk.endswith((b"}", b"0\r\n\r\n")):
                        break
    finally:
        writer.close()


async def json_amplification(port: int, rounds: int) -> None:
    doc = b'{"model": "%s", "x": [' % gb.MODEL.encode()
    doc += b",".join([b"{}"] * (8 << 20)) + b"]}"
    body = gzip.compress(doc, 9)
    for _ in range(rounds):
        await exchange(port, head(len(body), "Content-Encoding: gzip") + body)


async def slow_post(port: int, _rounds: int) -> None:
    piece = b"x" * MIB
    conns = [await asyncio.open_connection(HOST, port) for _ in range(12)]
    try:
        for _reader, writer in conns:
            writer.write(head(30 * MIB, key=None))
        for _ in range(30):
            for _reader, writer in conns:
                if not writer.is_closing():
                    writer.write(piece)
            with contextlib.suppress(ConnectionError):
                await asyncio.gather(*(w.drain() for _r, w in conns if not w.is_closing()))
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)  # stalled, holding whatever the gateway kept
    finally:
        for _reader, writer in conns:
            writer.close()


async def one_byte_chunks(port: int, _rounds: int) -> None:
    body = json.dumps({"model": gb.MODEL, "pad": "z" * (1 << 20)}).encode()
    wire = head(None, "Transfer-Encoding: chunked")
    wire += b"".join(b"1\r\n%s\r\n" % body[i : i + 1] for i in range(len(body))) + b"0\r\n\r\n"
    await exchange(port, wire)


ATTACKS = {
    "json_amplification": json_amplification,
    "slow_post": slow_post,
    "one_byte_chunks": one_byte_chunks,
}


async def measure(port: int, pid: int, attack: str, rounds: int) -> dict[str, float]:
    idle = Probe(port)
    idle.start()
    await asyncio.sleep(1.0)
    idle.stop()
    rss_before = rss_bytes(pid)
    probe, rss = Probe(port), RssPeak(pid)
    probe.start()
    rss.start()
    await ATTACKS[attack](port, rounds)
    await asyncio.sleep(0.2)
    probe.stop()
    rss.stop()
    return {
        "idle_worst_ms": round(idle.worst * 1000, 1),
        "stall_ms": round(probe.worst * 1000, 1),
        "rss_growth_mib": round(max(0, rss.peak - rss_before) / MIB, 1),
    }


async def run(args: argparse.Namespace, trees: dict[str, Path], keys: str) -> dict[str, Any]:
    up_port = gb.free_port(gb.HOSTS["upstream"])
    upstream_proc = gb.spawn(["--role", "upstream", "--port", str(up_port), "--chunks", "1"])
    upstream = f"http://{gb.HOSTS['upstream']}:{up_port}"
    out: dict[str, Any] = {}
    try:
        for attack in ATTACKS:
            out[attack] = {}
            for name, tree in trees.items():
                # A fresh gateway per attack: RSS growth is measured from a clean process.
                proc, port = spawn_gateway(tree, upstream, keys)
                try:
                    out[attack][name] = await measure(port, proc.pid, attack, args.rounds)
                finally:
                    proc.kill()
                    proc.wait()
                print(f"{attack:<20} {name:<8} {out[attack][name]}", flush=True)
    finally:
        upstream_proc.kill()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["gateway"], help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--upstream", help=argparse.SUPPRESS)
    p.add_argument("--keys", help=argparse.SUPPRESS)
    p.add_argument("--base", default="ac59601^", help="git revision before the hardening")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "abuse.json"))
    args = p.parse_args()
    if args.role == "gateway":
        asyncio.run(serve_gateway(args.port, args.upstream, args.keys))
        return 0
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        keys = Path(tmp) / "keys"
        keys.write_text(KEY + "\n")
        base = Path(tmp) / "base"
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "add", "--detach", "-q", str(base), args.base],
            check=True,
        )
        try:
            rows = asyncio.run(run(args, {"base": base, "current": REPO}, str(keys)))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)])
    ratios = {
        attack: {
            key: round(by["current"][key] / by["base"][key], 3) if by["base"][key] else None
            for key in ("stall_ms", "rss_growth_mib")
        }
        for attack, by in rows.items()
    }
    for attack, r in ratios.items():
        print(f"{attack:<20} current/base: stall {r['stall_ms']}, RSS growth {r['rss_growth_mib']}")
    gb.write_result(
        Path(args.out),
        {
            "benchmark": "gateway under issue 13's attacks, base vs current (loopback)",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "params": {"base": args.base, "rounds": args.rounds},
            "results": rows,
            "ratios": ratios,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
