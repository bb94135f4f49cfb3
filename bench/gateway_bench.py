"""Gateway overhead benchmark: direct vs through the gateway vs through nginx, in one run.

    .venv/bin/python bench/gateway_bench.py [--requests 2000] [--rounds 6] [--concurrency 1,16,64]
                                            [--layouts shared,pinned]
                                            [--out bench/results/gateway.json]

An SSE upstream (its own process) streams `--chunks` events per request as fast as it can. The
load generator (this process) runs `--concurrency` streams at a time and times every request:
time to first chunk (TTFB) and to the end of the stream. The same upstream is reached directly,
through the real Gateway (StaticSource, its own process; uvloop as shipped, and the default
asyncio loop) and through nginx as a plain reverse proxy (its own process, one worker,
keepalive to the upstream, proxy_buffering off). Overhead is a proxy's percentile minus the
direct percentile at the same concurrency; CPU per request is the proxy process's (nginx: its
worker's) user+system time over the requests it carried.

Layouts: `shared` lets the OS place every process on any CPU (proxies compete with the load
generator and the upstream); `pinned` gives the proxies CPU 0 and the load generator and the
upstream the other CPUs, the way a gateway runs on its own cores in production, and removes
the scheduler's placement luck from the comparison. Every proxy gets the same placement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


def spawn(
    args: list[str], cpus: set[int] | None = None, tree: Path | None = None
) -> subprocess.Popen[str]:
    """This bench in a child `--role`; `tree`: another checkout's bench and package (A/B)."""
    script, env = __file__, dict(os.environ)
    if tree is not None:
        script = str(tree / "bench" / "gateway_bench.py")
        env["PYTHONPATH"] = str(tree / "operator")
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
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


# nginx as a plain process under a scratch directory: every path it writes, inside it.
NGINX_HEAD = """
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
"""
NGINX_CONF = (
    NGINX_HEAD
    + """    upstream backend {{ server {upstream}; keepalive 128; }}
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
)


def run_nginx(
    tmp: Path, conf_text: str, host: str, port: int, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """nginx with `conf_text` as its configuration, once it accepts on host:port."""
    import socket

    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    conf = tmp / "nginx.conf"
    conf.write_text(conf_text)
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(tmp)],
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("nginx did not start")


def start_nginx(
    tmp: Path, upstream_addr: str, port: int, cpus: set[int] | None = None
) -> subprocess.Popen[bytes]:
    """nginx as a reverse proxy to `upstream_addr`: the gateway's yardstick."""
    listen = f"{HOSTS['nginx']}:{port}"
    conf = NGINX_CONF.format(dir=tmp, upstream=upstream_addr, listen=listen)
    return run_nginx(tmp, conf, HOSTS["nginx"], port, cpus)


# -- load generator ---------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and its direct children (nginx's worker)."""

    def one(p: int) -> float:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return one(pid) + sum(one(int(k)) for k in kids)


def context_switches(pid: int) -> int:
    """Times a process and its direct children (nginx's worker) were switched out: at one stream,
    about one per event the proxy waits for (it sleeps in epoll between them)."""

    def one(p: int) -> int:
        status = Path(f"/proc/{p}/status").read_text().splitlines()
        return sum(int(line.split()[1]) for line in status if "ctxt_switches:" in line)

    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        kids = []
    return one(pid) + sum(one(int(k)) for k in kids)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


async def run_cell(url: str, concurrency: int, requests: int, warmup: int) -> dict[str, Any]:
    """`requests` timed requests (after `warmup` untimed ones) at `concurrency` streams."""
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
    return {"ttfb": ttfb, "total": total, "elapsed": elapsed, "sent": warmup + requests}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """One target's rounds pooled: percentiles over every timed request of every round."""
    ttfb = [v for s in samples for v in s["ttfb"]]
    total = [v for s in samples for v in s["total"]]
    sent = sum(s["sent"] for s in samples)
    return {
        "ttfb_ms": {"p50": pct(ttfb, 50), "p99": pct(ttfb, 99)},
        "total_ms": {"p50": pct(total, 50), "p99": pct(total, 99)},
        "requests": len(total),
        "rps": sent / sum(s["elapsed"] for s in samples),
    }


async def bench(
    args: argparse.Namespace, urls: dict[str, str], pids: dict[str, int]
) -> dict[str, Any]:
    """Every target in turn, `--rounds` times, each round in a rotated order.

    The machine's speed drifts (other tenants, frequency): interleaving spreads that drift
    over every target instead of letting one slow stretch land on one of them.
    """
    cells: dict[str, Any] = {}
    names = list(urls)
    per_round = max(1, args.requests // args.rounds)
    for c in args.concurrency:
        samples: dict[str, list[dict[str, Any]]] = {t: [] for t in names}
        cpu: dict[str, float] = dict.fromkeys(names, 0.0)
        for target in names:  # warm every connection pool and cache once, untimed
            await run_cell(urls[target], c, 0, args.warmup)
        for rnd in range(args.rounds):
            for target in names[rnd % len(names) :] + names[: rnd % len(names)]:
                before = cpu_seconds(pids[target]) if target in pids else 0.0
                samples[target].append(await run_cell(urls[target], c, per_round, 0))
                if target in pids:
                    cpu[target] += cpu_seconds(pids[target]) - before
        row: dict[str, Any] = {}
        for target in names:
            row[target] = summarize(samples[target])
            if target in pids:
                row[target]["cpu_us_per_request"] = round(
                    cpu[target] / (per_round * args.rounds) * 1e6, 1
                )
            print(f"c={c:<3} {target:<15} {json.dumps(row[target])}", flush=True)
        for proxy in [t for t in names if t != "direct"]:
            row[f"{proxy}_overhead_ms"] = {
                metric: {
                    p: round(row[proxy][metric][p] - row["direct"][metric][p], 3)
                    for p in ("p50", "p99")
                }
                for metric in ("ttfb_ms", "total_ms")
            }
        cells[str(c)] = row
    return cells


@contextlib.contextmanager
def placed(
    layout: str,
) -> Iterator[tuple[set[int] | None, set[int] | None, list[subprocess.Popen[Any]]]]:
    """A layout's CPUs for the proxies and for everything else (None: the OS places it), this
    process (the load generator) moved onto the latter, and a list of the processes started
    for it, stopped when the block ends."""
    ncpu = len(os.sched_getaffinity(0))
    proxy_cpus = {0} if layout == "pinned" else None
    rest = set(range(1, ncpu)) if layout == "pinned" else None
    mine = os.sched_getaffinity(0)
    procs: list[subprocess.Popen[Any]] = []
    try:
        if rest:
            os.sched_setaffinity(0, rest)  # the load generator
        yield proxy_cpus, rest, procs
    finally:
        os.sched_setaffinity(0, mine)
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_layout(args: argparse.Namespace, layout: str, tmp: Path) -> dict[str, Any]:
    with placed(layout) as (proxy_cpus, rest, procs):
        up_port = free_port(HOSTS["upstream"])
        procs.append(
            spawn(
                ["--role", "upstream", "--port", str(up_port), "--chunks", str(args.chunks)], rest
            )
        )
        upstream = f"http://{HOSTS['upstream']}:{up_port}"
        path = "/v1/chat/completions"
        urls = {"direct": upstream + path}
        pids: dict[str, int] = {}
        for name, loop in (("gateway", "uvloop"), ("gateway-asyncio", "asyncio")):
            port = free_port(HOSTS["gateway"])
            argv = ["--role", "gateway", "--port", str(port), "--upstream", upstream]
            proc = spawn([*argv, "--loop", loop], proxy_cpus)
            procs.append(proc)
            urls[name] = f"http://{HOSTS['gateway']}:{port}{path}"
            pids[name] = proc.pid
        ngx_port = free_port(HOSTS["nginx"])
        ngx_dir = tmp / layout
        ngx_dir.mkdir()
        ngx = start_nginx(ngx_dir, f"{HOSTS['upstream']}:{up_port}", ngx_port, proxy_cpus)
        procs.append(ngx)
        urls["nginx"] = f"http://{HOSTS['nginx']}:{ngx_port}{path}"
        pids["nginx"] = ngx.pid
        print(f"-- layout {layout}", flush=True)
        return asyncio.run(bench(args, urls, pids))


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


def report(path: Path) -> str:
    """The results file as the markdown table in docs/benchmarks.md."""
    doc = json.loads(path.read_text())
    lines = [
        "| layout | streams | direct p50 / p99 (ms) | gateway overhead p50 / p99 | "
        "nginx overhead p50 / p99 | CPU µs/request gateway / nginx | req/s direct / gateway / nginx |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for layout, cells in doc["results"].items():
        for c, row in cells.items():
            d = row["direct"]["ttfb_ms"]
            g = row["gateway_overhead_ms"]["ttfb_ms"]
            n = row["nginx_overhead_ms"]["ttfb_ms"]
            lines.append(
                f"| {layout} | {c} | {d['p50']:.2f} / {d['p99']:.2f} "
                f"| {g['p50']:+.2f} / {g['p99']:+.2f} | {n['p50']:+.2f} / {n['p99']:+.2f} "
                f"| {row['gateway']['cpu_us_per_request']:.0f} / "
                f"{row['nginx']['cpu_us_per_request']:.0f} "
                f"| {row['direct']['rps']:.0f} / {row['gateway']['rps']:.0f} / "
                f"{row['nginx']['rps']:.0f} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["bench", "upstream", "gateway"], default="bench")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", default="")
    p.add_argument("--chunks", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument(
        "--rounds", type=int, default=6, help="interleaved rounds per cell (requests split)"
    )
    p.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64]
    )
    p.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    p.add_argument(
        "--layouts",
        type=lambda s: [x for x in s.split(",") if x in ("shared", "pinned")],
        default=["shared", "pinned"],
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gateway.json"))
    p.add_argument("--report", type=Path, help="print a results file as a markdown table")
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return 0
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

    layouts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="gw-bench-") as tmp:
        for layout in args.layouts:
            if layout == "pinned" and len(os.sched_getaffinity(0)) < 2:
                print("pinned layout needs 2 CPUs; skipped", flush=True)
                continue
            layouts[layout] = run_layout(args, layout, Path(tmp))
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
            "rounds": args.rounds,
            "chunks": args.chunks,
            "concurrency": args.concurrency,
            "layouts": args.layouts,
        },
        "results": layouts,
    }
    write_result(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
