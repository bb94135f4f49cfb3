"""Gateway throughput with 1, 2 and 4 worker processes, side by side in one run.

    .venv/bin/python bench/gateway_workers_bench.py [--workers 1,2,4] [--rounds 4]
                                                    [--seconds 5] [--connections 256]
                                                    [--out bench/results/gateway_workers.json]

The gateway runs as shipped for each count: one process for 1 (no supervisor), else the
supervisor of gateway/workers.py starting N workers on one SO_REUSEPORT port, with metrics in
prometheus_client's multiprocess mode. Only the source of models differs from production: a
StaticSource (no apiserver), whose watch would be idle during the run anyway. The upstream is
nginx answering a short SSE body itself (`return 200`), so the upstream costs next to nothing,
and the load generator is wrk (C, one thread, `--connections` keep-alive connections POSTing a
chat request with `"stream": true`); both are far cheaper per request than the gateway, so the
gateway is what saturates.

Two layouts, each with every worker count, interleaved round by round (the host is shared and
drifts; the ratios between counts within a layout are the result):

- `1core`: the gateway (supervisor and workers) pinned to CPU 0, nginx and wrk to CPU 1.
  More workers cannot add CPU here: this measures what the extra processes cost.
- `2cores`: the gateway on CPUs 0-1 and nginx and wrk on the others; on a 2-CPU machine
  nothing is pinned (the gateway may use both CPUs and shares them with nginx and wrk). This
  is where requests per second can scale with workers.

Requires wrk and nginx (`apt-get install wrk nginx`). On a host shared with other sessions
(Linux groups each session's processes for the scheduler: autogroup), the run recorded in
docs/benchmarks.md was started in a session of its own with a raised group priority:
`setsid bash -c 'echo -10 > /proc/self/autogroup; exec nice -n -10 .venv/bin/python bench/...'`.
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

sys.path.insert(0, str(Path(__file__).parent))
import gateway_bench as gb

HOST_GATEWAY = "127.0.10.12"
HOST_UPSTREAM = "127.0.10.11"
MODEL = "bench"
SSE = 'data: {"choices":[{"delta":{"content":"tok"}}]}\\n\\ndata: [DONE]\\n\\n'

NGINX_UPSTREAM = (
    gb.NGINX_HEAD
    + """    keepalive_requests 1000000;
    server {{
        listen {listen};
        location / {{ default_type text/event-stream; return 200 '{body}'; }}
    }}
}}
"""
)

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": true}'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "socket_errors": %d, "status_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


# -- the gateway, as a child of this script -----------------------------------------------------


async def serve_gateway(port: int, upstream: str) -> None:
    """One gateway process: alone (one worker) or as worker N of a supervisor, as main does."""
    from vllm_sleep.gateway import Gateway, GatewayConfig, MemoryDemand, StaticSource
    from vllm_sleep.gateway.metrics import GatewayMetrics
    from vllm_sleep.gateway.workers import merged_registry, worker_role

    role = worker_role(os.environ)
    source = StaticSource("bench")
    source.add_model(MODEL, [upstream])
    cfg = GatewayConfig(listen_host=HOST_GATEWAY, port=port, reuse_port=role is not None)
    metrics = GatewayMetrics(worker=None if role is None else role.index)
    if role is not None:
        metrics.exposed = merged_registry()
    async with Gateway(cfg, source, MemoryDemand(), metrics=metrics):
        print("READY", flush=True)
        await asyncio.Event().wait()


async def supervise(port: int, upstream: str, workers: int) -> None:
    from vllm_sleep.gateway.workers import Supervisor, reserve_port

    sock = reserve_port(HOST_GATEWAY, port)
    command = [sys.executable, __file__, "--role", "gateway", "--port", str(port)]
    with tempfile.TemporaryDirectory(prefix="gw-workers-metrics-") as metrics_dir:
        supervisor = Supervisor([*command, "--upstream", upstream], workers, Path(metrics_dir))
        task = asyncio.create_task(supervisor.run())
        print("READY", flush=True)  # the bench waits for the port itself
        await task
    sock.close()


# -- the bench ----------------------------------------------------------------------------------


def start_gateway(workers: int, upstream: str, cpus: set[int] | None) -> tuple[Any, str]:
    port = gb.free_port(HOST_GATEWAY)
    role = "gateway" if workers == 1 else "supervisor"
    argv = [sys.executable, __file__, "--role", role, "--port", str(port)]
    argv += ["--upstream", upstream, "--workers", str(workers)]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        start_new_session=True,
    )
    assert proc.stdout is not None
    if "READY" not in proc.stdout.readline():
        raise RuntimeError(f"gateway ({workers} workers) did not start")
    url = f"http://{HOST_GATEWAY}:{port}"
    deadline = time.monotonic() + 30
    import httpx

    # Every worker listening: /metrics lists one series per worker once each answered; with
    # one worker, /healthz is enough.
    while time.monotonic() < deadline:
        try:
            for _ in range(8 * workers):
                httpx.get(f"{url}/healthz", timeout=1)
            text = httpx.get(f"{url}/metrics", timeout=1).text
            if workers == 1 or text.count("vllm_sleep_gateway_worker_requests_total{") >= workers:
                return proc, url + "/v1/chat/completions"
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gateway ({workers} workers) not serving")


def per_worker(url: str) -> dict[str, float]:
    import re

    import httpx

    base = url.rsplit("/v1/", 1)[0]
    text = httpx.get(f"{base}/metrics", timeout=5).text
    found = re.findall(
        r'^vllm_sleep_gateway_worker_requests_total\{worker="(\d+)"\} (\S+)$', text, re.M
    )
    return {w: float(v) for w, v in found}


def tree_cpu(pid: int) -> float:
    """User+system CPU of the gateway: the process and its children (the workers)."""
    return gb.cpu_seconds(pid)


def run_wrk(
    url: str, script: Path, seconds: int, connections: int, cpus: set[int] | None
) -> dict[str, Any]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        check=True,
    ).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
    result: dict[str, Any] = json.loads(line[len("RESULT ") :])
    return result


def placement(layout: str) -> tuple[set[int] | None, set[int] | None]:
    """(gateway CPUs, nginx and wrk CPUs); None = not pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    want = 1 if layout == "1core" else 2
    if len(cpus) > want:  # the gateway gets `want` CPUs of its own, the rest the others
        return set(cpus[:want]), set(cpus[want:])
    return None, None  # 2 cores on a 2-CPU machine: everything shares both


def run_layout(args: argparse.Namespace, layout: str, tmp: Path, script: Path) -> dict[str, Any]:
    gateway_cpus, other_cpus = placement(layout)
    print(
        f"-- {layout}: gateway on {gateway_cpus or 'any CPU'}, nginx and wrk on "
        f"{other_cpus or 'any CPU'}",
        flush=True,
    )
    up_port = gb.free_port(HOST_UPSTREAM)
    ngx_dir = tmp / layout
    ngx_dir.mkdir()
    conf = NGINX_UPSTREAM.format(dir=ngx_dir, listen=f"{HOST_UPSTREAM}:{up_port}", body=SSE)
    nginx = gb.run_nginx(ngx_dir, conf, HOST_UPSTREAM, up_port, other_cpus)
    upstream = f"http://{HOST_UPSTREAM}:{up_port}"
    gateways: dict[int, tuple[Any, str]] = {}
    try:
        for n in args.workers:
            gateways[n] = start_gateway(n, upstream, gateway_cpus)
        for _, url in gateways.values():  # warm every pool once, untimed
            run_wrk(url, script, 1, args.connections, other_cpus)
        rounds: dict[int, list[dict[str, Any]]] = {n: [] for n in args.workers}
        names = list(args.workers)
        for rnd in range(args.rounds):
            for n in names[rnd % len(names) :] + names[: rnd % len(names)]:
                proc, url = gateways[n]
                before = tree_cpu(proc.pid)
                cell = run_wrk(url, script, args.seconds, args.connections, other_cpus)
                cell["gateway_cpu_s"] = tree_cpu(proc.pid) - before
                rounds[n].append(cell)
                print(f"{layout} workers={n} round={rnd} {json.dumps(cell)}", flush=True)
        out = {str(n): summarize(cells) for n, cells in rounds.items()}
        for n, (_, url) in gateways.items():
            if n > 1:  # how SO_REUSEPORT spread the connections: requests per worker
                out[str(n)]["requests_per_worker"] = per_worker(url)
        return out
    finally:
        for proc, _ in gateways.values():
            os.killpg(proc.pid, signal.SIGTERM)
        for proc, _ in gateways.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        nginx.send_signal(signal.SIGTERM)
        nginx.wait(10)


def summarize(cells: list[dict[str, Any]]) -> dict[str, Any]:
    requests = sum(c["requests"] for c in cells)
    seconds = sum(c["duration_us"] for c in cells) / 1e6
    rps = sorted(c["requests"] / (c["duration_us"] / 1e6) for c in cells)
    return {
        "rps": round(requests / seconds),
        "rps_rounds": [round(r) for r in rps],
        "p50_ms_median": sorted(c["p50_us"] for c in cells)[len(cells) // 2] / 1000,
        "p99_ms_median": sorted(c["p99_us"] for c in cells)[len(cells) // 2] / 1000,
        "cpu_us_per_request": round(sum(c["gateway_cpu_s"] for c in cells) / requests * 1e6, 1),
        # Cores the gateway actually got (CPU seconds per second): on a shared host, whether
        # it was saturated or starved.
        "cores_used": round(sum(c["gateway_cpu_s"] for c in cells) / seconds, 2),
        "errors": sum(c["socket_errors"] + c["status_errors"] for c in cells),
    }


def report(path: Path) -> str:
    doc = json.loads(path.read_text())
    lines = [
        "| layout | workers | req/s | vs 1 worker | p50 / p99 (ms) | gateway CPU µs/request "
        "| cores the gateway used |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for layout, rows in doc["results"].items():
        base = rows["1"]["rps"]
        for n, row in rows.items():
            lines.append(
                f"| {layout} | {n} | {row['rps']} | {row['rps'] / base:.2f}x "
                f"| {row['p50_ms_median']:.2f} / {row['p99_ms_median']:.2f} "
                f"| {row['cpu_us_per_request']:.0f} | {row.get('cores_used', 0):.2f} |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--role", choices=["bench", "gateway", "supervisor"], default="bench")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", default="")
    p.add_argument("--workers", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--connections", type=int, default=256)
    p.add_argument(
        "--layouts",
        type=lambda s: [x for x in s.split(",") if x in ("1core", "2cores")],
        default=["1core", "2cores"],
    )
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gateway_workers.json"))
    p.add_argument("--report", type=Path, help="print a results file as a markdown table")
    args = p.parse_args()
    if args.report:
        print(report(args.report))
        return 0
    if args.role in ("gateway", "supervisor"):
        import uvloop

        if args.role == "gateway":
            uvloop.run(serve_gateway(args.port, args.upstream))
        else:
            asyncio.run(supervise(args.port, args.upstream, args.workers[0]))
        return 0
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 CPUs", file=sys.stderr)
        return 1
    results: dict[str, Any] = {}
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="gw-workers-bench-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        for layout in args.layouts:
            results[layout] = run_layout(args, layout, Path(tmp), script)
    versions = {
        tool: subprocess.run([tool, "-v"], capture_output=True, text=True).stdout.strip()
        or subprocess.run([tool, "-v"], capture_output=True, text=True).stderr.strip()
        for tool in ("wrk", shutil.which("nginx") or "/usr/sbin/nginx")
    }
    result = {
        "benchmark": "gateway throughput by worker processes (SSE, loopback, wrk)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": load_at_start,
            "loadavg_at_end": os.getloadavg(),
            "tools": {Path(k).name: v.splitlines()[0] if v else "" for k, v in versions.items()},
        },
        "params": {
            "workers": args.workers,
            "rounds": args.rounds,
            "seconds": args.seconds,
            "connections": args.connections,
            "layouts": args.layouts,
            "placement": {
                layout: [sorted(c) if c else "any" for c in placement(layout)]
                for layout in args.layouts
            },
        },
        "results": results,
    }
    gb.write_result(Path(args.out), result)
    print(report(Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
