"""Gateway overhead benchmark: direct vs through the gateway vs through nginx, in one run.

    .venv/bin/python bench/gateway_bench.py [--requests 2000] [--concurrency 1,16,64]
                                            [--out bench/results/gateway.json]

An SSE upstream (its own process) streams `--chunks` events per request as fast as it can. The
load generator (this process) runs `--concurrency` streams at a time and times every request:
time to first chunk (TTFB) and to the end of the stream. The same upstream is reached directly,
through the real Gateway (StaticSource, its own process) and through nginx as a plain reverse
proxy (its own process, one worker, keepalive to the upstream, proxy_buffering off). Overhead is
a proxy's percentile minus the direct percentile at the same concurrency. Every process shares
the same cores, so the absolute numbers depend on the machine; the comparison is the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

HOSTS = {"upstream": "127.0.10.1", "gateway": "127.0.10.2", "nginx": "127.0.10.3"}
MODEL = "bench"


# -- child roles ------------------------------------------------------------------------------


async def serve_upstream(port: int, chunks: int) -> None:
    event = b'data: {"choices":[{"delta":{"content":"tok"}}]}\n\n'

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(chunks):
            await resp.write(event)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    runner = web.ServerRunner(web.Server(handle, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, HOSTS["upstream"], port).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def serve_gateway(port: int, upstream: str) -> None:
    from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource

    source = StaticSource("bench")
    source.add_model(MODEL, [upstream])
    cfg = GatewayConfig(listen_host=HOSTS["gateway"], port=port)
    async with Gateway(cfg, source, MemoryDemand()):
        print("READY", flush=True)
        await asyncio.Event().wait()


def spawn(args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if "READY" not in line:
        proc.kill()
        raise RuntimeError(f"{args[:2]} did not start: {line!r}")
    return proc


def free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backend {{ server {upstream}; keepalive 128; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def start_nginx(tmp: Path, upstream_addr: str, port: int) -> subprocess.Popen[bytes]:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(dir=tmp, upstream=upstream_addr, listen=f"{HOSTS['nginx']}:{port}")
    )
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(tmp)])
    deadline = time.monotonic() + 10
    import socket

    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOSTS["nginx"], port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


# -- load generator ---------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def run_cell(url: str, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    body = json.dumps(
        {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    ).encode()
    headers = {"Content-Type": "application/json"}
    ttfb: list[float] = []
    total: list[float] = []
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        remaining = warmup + requests

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                record = remaining < requests
                t0 = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as resp:
                    first = None
                    async for _ in resp.content.iter_any():
                        if first is None:
                            first = time.perf_counter()
                    assert resp.status == 200, resp.status
                t1 = time.perf_counter()
                if record:
                    ttfb.append(((first or t1) - t0) * 1000)
                    total.append((t1 - t0) * 1000)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "ttfb_ms": {"p50": pct(ttfb, 50), "p99": pct(ttfb, 99)},
        "total_ms": {"p50": pct(total, 50), "p99": pct(total, 99)},
        "requests": len(total),
        "rps": (warmup + requests) / elapsed,
    }


async def bench(args: argparse.Namespace, urls: dict[str, str]) -> dict[str, Any]:
    cells: dict[str, Any] = {}
    for c in args.concurrency:
        row: dict[str, Any] = {}
        for target, url in urls.items():
            row[target] = await run_cell(url, c, args.requests, args.warmup)
            print(f"c={c:<3} {target:<8} {json.dumps(row[target])}", flush=True)
        for proxy in [t for t in urls if t != "direct"]:
            row[f"{proxy}_overhead_ms"] = {
                metric: {
                    p: round(row[proxy][metric][p] - row["direct"][metric][p], 3)
                    for p in ("p50", "p99")
                }
                for metric in ("ttfb_ms", "total_ms")
            }
        cells[str(c)] = row
    return cells


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["bench", "upstream", "gateway"], default="bench")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", default="")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gateway.json"))
    args = p.parse_args()
    if args.role == "upstream":
        asyncio.run(serve_upstream(args.port, args.chunks))
        return 0
    if args.role == "gateway":
        if args.loop == "uvloop":
            import uvloop

            uvloop.run(serve_gateway(args.port, args.upstream))
        else:
            asyncio.run(serve_gateway(args.port, args.upstream))
        return 0

    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        try:
            up_port = free_port(HOSTS["upstream"])
            procs.append(
                spawn(["--role", "upstream", "--port", str(up_port), "--chunks", str(args.chunks)])
            )
            upstream = f"http://{HOSTS['upstream']}:{up_port}"
            gw_port = free_port(HOSTS["gateway"])
            procs.append(
                spawn(["--role", "gateway", "--port", str(gw_port), "--upstream", upstream])
            )
            # The same gateway on uvloop (what `vllm-sleep gateway` uses when installed).
            uv_port = free_port(HOSTS["gateway"])
            procs.append(
                spawn(
                    [
                        "--role",
                        "gateway",
                        "--port",
                        str(uv_port),
                        "--upstream",
                        upstream,
                        "--loop",
                        "uvloop",
                    ]
                )
            )
            ngx_port = free_port(HOSTS["nginx"])
            procs.append(start_nginx(Path(tmp), f"{HOSTS['upstream']}:{up_port}", ngx_port))
            path = "/v1/chat/completions"
            urls = {
                "direct": upstream + path,
                "gateway": f"http://{HOSTS['gateway']}:{gw_port}{path}",
                "gateway-uvloop": f"http://{HOSTS['gateway']}:{uv_port}{path}",
                "nginx": f"http://{HOSTS['nginx']}:{ngx_port}{path}",
            }
            cells = asyncio.run(bench(args, urls))
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    nginx_version = subprocess.run(
        [shutil.which("nginx") or "/usr/sbin/nginx", "-v"], capture_output=True, text=True
    ).stderr.strip()
    result = {
        "benchmark": "gateway overhead (SSE, loopback)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
            "nginx": nginx_version,
        },
        "params": {
            "requests": args.requests,
            "warmup": args.warmup,
            "chunks": args.chunks,
            "concurrency": args.concurrency,
        },
        "results": cells,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
