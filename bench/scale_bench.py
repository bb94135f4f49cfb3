"""Scale: N ModelDeployments on M simulated GPU nodes, what the operator costs to bring up and hold.

    .venv/bin/python bench/scale_bench.py [--models 200] [--nodes 50] [--gpus-per-node 8]
        [--resync-seconds 30] [--steady-seconds 60] [--wakes 100] [--idle-timeout 20]
        [--profile] [--out bench/results/scale-200x50.json]
    .venv/bin/python bench/scale_bench.py --plot     # bench/results/scale.png from scale-*.json

Starts its own local cluster (control plane + one sim-kubelet for all M nodes: every engine and
agent runs in that one process), the operator and the gateway as processes with their
ServiceAccounts' RBAC (`wake_bench.Cluster`). Each of them runs under a small probe
(`scale_bench.py probe ...`) that counts the Kubernetes API requests the process makes at the
client (method and resource, from aiohttp, which both kopf and kubernetes_asyncio use), and, with
`--profile`, runs cProfile (a SIGUSR1 dumps the profile so far and starts a new one).

Models: one replica on one whole simulated GPU each (no pool), level 1, 2 GiB of weights, the
engine's simulated load `--load-seconds` (time scale 1). The simulated agents poll their
engine's /health every `--agent-health-interval` s while it is up (30; a real agent's 5 s made
the one sim-kubelet process, not the operator, the bottleneck of a big fleet). Measured:

1. bring-up: from the first create (concurrent creates, as a GitOps tool applies) until every
   model's status says Asleep (pre-warmed: loaded, then put to sleep), minus the load time;
   the operator's CPU seconds over that time (utime+stime from /proc).
2. steady state: `--steady-seconds` of an idle fleet: operator CPU (cores) and RSS, and the API
   requests per second of the operator and of the gateway, by verb and resource.
3. wakes: `--wakes` chat requests at once through the gateway, one per sleeping model: latency.
4. idle sleeps: those models then idle; each one's sleep should start within idleTimeout + 2 s of
   its last request (the agent's `last_activity` to its `draining`/`sleeping` since).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
NS = "scale"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
TRACE_MEMORY_ENV = "SCALE_BENCH_TRACEMALLOC"  # frames to keep; the operator's probe reads it
WRITE_VERBS = ("create", "patch", "update", "delete")
KUBELET_PROFILE_ENV = "VLLM_SLEEP_SIM_KUBELET_PROFILE"
TRACE_ENV = "SCALE_BENCH_TRACE_WRITES"


# --- the probe: runs inside the operator's and the gateway's processes ------------------------


def classify(method: str, path: str, query: str) -> str | None:
    """`verb resource[/subresource]` of a Kubernetes API request, or None for anything else."""
    segs = [s for s in path.split("/") if s]
    if not segs or segs[0] not in ("api", "apis"):
        return None
    segs = segs[2:] if segs[0] == "api" else segs[3:]  # drop api/v1 or apis/group/version
    if len(segs) >= 3 and segs[0] == "namespaces":
        segs = segs[2:]
    if not segs:
        return None
    res, named, sub = segs[0], len(segs) > 1, "/".join(segs[2:])
    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(method)
    if verb is None:
        watch = "watch=true" in query or "watch=1" in query
        verb = "get" if named else ("watch" if watch else "list")
    return f"{verb} {res}" + (f"/{sub}" if sub else "")


def probe_main(argv: list[str]) -> int:
    """`scale_bench.py probe COUNTS_FILE PROFILE_FILE|- -- <vllm-sleep cli args>`."""
    counts_file, profile_file = Path(argv[0]), argv[1]
    cli_args = argv[argv.index("--") + 1 :]
    import aiohttp

    counts: Counter[str] = Counter()
    original = aiohttp.ClientSession._request
    # Every write, with the start of its body: what a model's bring-up writes, in order.
    trace = (
        counts_file.with_suffix(".writes").open("w", buffering=1)
        if os.environ.get(TRACE_ENV)
        else None
    )

    async def counted(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        url = aiohttp.client.URL(str_or_url) if isinstance(str_or_url, str) else str_or_url
        query = url.query_string
        params = kwargs.get("params")
        if params:
            query += "&" + "&".join(f"{k}={v}" for k, v in dict(params).items())
        key = classify(method.upper(), url.path, query.lower())
        if key is None:
            return await original(self, method, str_or_url, **kwargs)
        counts[key] += 1
        if trace is None or key.split()[0] not in WRITE_VERBS:
            return await original(self, method, str_or_url, **kwargs)
        # Issued and answered: the gap is the wait for a connection plus the apiserver's time.
        # A Secret's body is its token: never logged.
        body = kwargs.get("json") if kwargs.get("json") is not None else kwargs.get("data")
        said = "" if key.endswith("secrets") else str(body)[:3000]
        issued = time.time()
        try:
            return await original(self, method, str_or_url, **kwargs)
        finally:
            trace.write(f"{issued:.3f} {time.time():.3f} {key} {url.path} {said}\n")

    aiohttp.ClientSession._request = counted  # type: ignore[method-assign]

    def dump_counts() -> None:
        while True:
            tmp = counts_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"t": time.time(), "counts": dict(counts)}))
            tmp.replace(counts_file)
            time.sleep(0.5)

    threading.Thread(target=dump_counts, daemon=True).start()
    from vllm_sleep.cli import main as cli_main

    if os.environ.get(TRACE_MEMORY_ENV):  # where the memory is: top lines at each SIGUSR2
        import tracemalloc

        tracemalloc.start(int(os.environ[TRACE_MEMORY_ENV]))
        marks = {"n": 0}

        def snapshot(*_: Any) -> None:
            top = tracemalloc.take_snapshot().statistics("traceback")[:40]
            lines = [
                f"{s.size / 2**20:8.2f} MiB {s.count:8d} blocks\n"
                + "\n".join(f"    {line}" for line in s.traceback.format()[-8:])
                for s in top
            ]
            Path(f"{counts_file}.mem.{marks['n']}").write_text("\n".join(lines))
            tracemalloc.take_snapshot().dump(f"{counts_file}.mem.{marks['n']}.snap")  # offline
            import gc  # live objects by type, for what tracemalloc's C-side frames hide

            types = Counter(type(o).__qualname__ for o in gc.get_objects()).most_common(80)
            Path(f"{counts_file}.mem.{marks['n']}.types").write_text(json.dumps(types, indent=0))
            marks["n"] += 1

        signal.signal(signal.SIGUSR2, snapshot)
    if profile_file == "-":
        return cli_main(cli_args)
    import cProfile

    state = {"prof": cProfile.Profile(), "n": 0}

    def dump(*_: Any) -> None:
        prof = state["prof"]
        prof.disable()  # type: ignore[attr-defined]
        prof.dump_stats(f"{profile_file}.{state['n']}")  # type: ignore[attr-defined]
        state["n"] = int(state["n"]) + 1  # type: ignore[call-overload]
        state["prof"] = cProfile.Profile()
        state["prof"].enable()  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, dump)
    state["prof"].enable()  # type: ignore[attr-defined]
    try:
        return cli_main(cli_args)
    finally:
        dump()


# --- the bench ---------------------------------------------------------------------------------


def proc_cpu(pid: int | list[int]) -> float:
    """CPU seconds (user + system, all threads) of a live process (of several: their sum)."""
    if isinstance(pid, list):
        return sum(proc_cpu(p) for p in pid)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def read_counts(path: Path) -> Counter[str]:
    try:
        return Counter(json.loads(path.read_text())["counts"])
    except (OSError, ValueError):
        return Counter()


def apiserver_requests(cluster: Any) -> Counter[str]:
    """Every client's requests so far, by `verb resource[/subresource]`, from the apiserver's
    own `apiserver_request_total` (the sim-kubelet, scheduler and controllers included)."""
    import re

    out: Counter[str] = Counter()
    try:
        text = cluster.kubectl("get", "--raw", "/metrics")
    except Exception:  # a bench figure, not a reason to stop the run
        return out
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        verb = labels.get("verb", "").lower()
        verb = {"post": "create", "put": "update"}.get(verb, verb)
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        out[f"{verb} {res}"] += int(float(line.rsplit(" ", 1)[1]))
    return out


def apiserver_timings(cluster: Any) -> Counter[str]:
    """Sums and counts so far of the apiserver's own latency histograms: each request kind's
    time in the apiserver (`apiserver_request_duration_seconds`, watches excluded) and each
    priority level's queueing before it ran (`apiserver_flowcontrol_request_wait_duration_seconds`,
    API Priority and Fairness). Keys: `dur_sum|verb resource`, `fcwait_count|level`, ..."""
    import re

    out: Counter[str] = Counter()
    try:
        text = cluster.kubectl("get", "--raw", "/metrics")
    except Exception:
        return out
    for line in text.splitlines():
        for metric, kind in (
            ("apiserver_request_duration_seconds_sum{", "dur_sum"),
            ("apiserver_request_duration_seconds_count{", "dur_count"),
            ("apiserver_flowcontrol_request_wait_duration_seconds_sum{", "fcwait_sum"),
            ("apiserver_flowcontrol_request_wait_duration_seconds_count{", "fcwait_count"),
        ):
            if not line.startswith(metric):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
            if kind.startswith("dur"):
                verb = labels.get("verb", "").lower()
                if verb in ("watch", "connect"):
                    continue
                verb = {"post": "create", "put": "update"}.get(verb, verb)
                res = labels.get("resource", "")
                if labels.get("subresource"):
                    res += "/" + labels["subresource"]
                key = f"{verb} {res}"
            else:
                key = labels.get("priority_level", "?")
            out[f"{kind}|{key}"] += float(line.rsplit(" ", 1)[1])  # type: ignore[assignment]
    return out


def mean_ms(diff: Counter[str], kind: str, least: int = 100) -> dict[str, list[float]]:
    """{key: [mean ms, count]} of a timings difference, for keys seen at least `least` times."""
    out: dict[str, list[float]] = {}
    for k, n in diff.items():
        if not k.startswith(f"{kind}_count|") or n < least:
            continue
        key = k.split("|", 1)[1]
        out[key] = [round(1000 * diff[f"{kind}_sum|{key}"] / n, 1), int(n)]
    return dict(sorted(out.items(), key=lambda kv: -kv[1][0] * kv[1][1]))


def apiserver_profile(cluster: Any, seconds: float, results: Path) -> None:
    """A Go CPU profile of kube-apiserver over the next `seconds` (its /debug/pprof, on by
    default), written next to the results as `.apiserver.pprof` in the background; read it with
    `go tool pprof -top <file>`."""
    import subprocess

    out = results.with_suffix(".apiserver.pprof")
    url = f"/debug/pprof/profile?seconds={int(seconds)}"

    def fetch() -> None:
        with out.open("wb") as f:
            subprocess.run(
                [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "get", "--raw", url],
                stdout=f,
                check=False,
                timeout=seconds + 120,
            )

    threading.Thread(target=fetch, daemon=True).start()


def writes(counts: Counter[str] | dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.split()[0] in (*WRITE_VERBS, "apply"))


def rates(before: Counter[str], after: Counter[str], seconds: float) -> dict[str, float]:
    diff = after - before
    return {k: round(v / seconds, 3) for k, v in sorted(diff.items())}


def model_manifest(name: str, args: argparse.Namespace) -> dict[str, Any]:
    from wake_bench import sim_model_manifest  # bench/ is on sys.path once main() ran

    return sim_model_manifest(
        name,
        NS,
        env={"VLLM_SIM_PROFILE": "0.34", "VLLM_SIM_LOAD_SECONDS": str(args.load_seconds)},
        util=0.4,
        weights="2Gi",
        sleep={"level": 1, "idleTimeout": f"{args.idle_timeout}s", "policy": "Auto"},
    )


class Processes:
    """The operator's and gateway's pids and their probe files."""

    def __init__(self, cluster: Any, args: argparse.Namespace) -> None:
        from wake_bench import free_port

        self.cluster = cluster
        self.counts = {n: cluster.dir / f"{n}.counts.json" for n in ("operator", "gateway")}
        self.profile = {n: cluster.dir / f"{n}.prof" for n in ("operator", "gateway")}
        self.health = f"127.0.0.1:{free_port()}"
        self.trace_memory = args.trace_memory
        self.profiled = args.profile
        op = [
            "operator",
            f"--metrics-bind=127.0.0.1:{free_port()}",
            f"--health-bind={self.health}",
            f"--resync-seconds={args.resync_seconds}",
        ]
        self.pids = {"operator": self._spawn("operator", op, args.profile)}
        gw_cfg = cluster.sa_kubeconfig("vllm-sleep-gateway")
        self.gateway_port = free_port()
        # One gateway process: its API requests are counted in it (workers would be their own).
        gw = [
            "gateway",
            "--host=127.0.0.1",
            f"--port={self.gateway_port}",
            f"--kubeconfig={gw_cfg}",
        ]
        if args.gateway_workers:  # 0: a gateway from before --workers existed
            gw.append(f"--workers={args.gateway_workers}")
        self.pids["gateway"] = self._spawn("gateway", gw, False, gw_cfg)

    def _spawn(self, name: str, argv: list[str], profile: bool, cfg: str | None = None) -> int:
        import subprocess

        cfg = cfg or self.cluster.sa_kubeconfig(f"vllm-sleep-{name}")
        env = {**os.environ, "KUBECONFIG": cfg, "PYTHONUNBUFFERED": "1"}
        if name == "operator" and self.trace_memory:
            env[TRACE_MEMORY_ENV] = str(self.trace_memory)
        prof = str(self.profile[name]) if profile else "-"
        log = (self.cluster.dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, __file__, "probe", str(self.counts[name]), prof, "--", *argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.cluster.procs.append(proc)
        return proc.pid

    def signal_profile(self) -> None:
        if self.profiled:
            os.kill(self.pids["operator"], signal.SIGUSR1)
        if os.environ.get(KUBELET_PROFILE_ENV):
            for name, pid in self.cluster.state.pids.items():
                if name.startswith("sim-kubelet"):
                    os.kill(pid, signal.SIGUSR1)


async def wait_http(http: Any, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        await asyncio.sleep(0.3)
    raise TimeoutError(url)


class Phases:
    """Every model's `status.phase`, kept by a watch (a LIST of the whole fleet every second
    was apiserver CPU and a core's worth of JSON counted against the bring-up at 1,000)."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.phase: dict[str, str | None] = {}
        self._task: asyncio.Task[None] | None = None

    def _keep(self, obj: dict[str, Any]) -> None:
        self.phase[obj["metadata"]["name"]] = (obj.get("status") or {}).get("phase")

    async def _follow(self) -> None:
        from kubernetes_asyncio import client

        from vllm_sleep.testing.kubelet.rawapi import watch_events

        objs = client.CustomObjectsApi(self._api)
        args = ("vllm-sleep.io", "v1alpha1", NS, "modeldeployments")
        while True:
            try:
                resp = await objs.list_namespaced_custom_object(*args, _preload_content=False)
                data = await resp.json()
                for item in data["items"]:
                    self._keep(item)
                watch = objs.list_namespaced_custom_object(
                    *args,
                    watch=True,
                    resource_version=data["metadata"]["resourceVersion"],
                    timeout_seconds=300,
                    _preload_content=False,
                )
                async for event in watch_events(watch):
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._keep(event["object"])
                    elif event["type"] == "DELETED":
                        self.phase.pop(event["object"]["metadata"]["name"], None)
                    elif event["type"] == "ERROR":
                        break
            except Exception as e:  # a bench: relist and go on
                print(f"phase watch: {e!r}; relisting", flush=True)
                await asyncio.sleep(1)

    def start(self) -> None:
        self._task = asyncio.create_task(self._follow())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def create_models(api: Any, names: list[str], args: argparse.Namespace) -> None:
    from kubernetes_asyncio import client
    from kubernetes_asyncio.client.exceptions import ApiException

    objs = client.CustomObjectsApi(api)
    sem = asyncio.Semaphore(32)

    async def one(name: str) -> None:
        async with sem:
            for _ in range(100):  # the namespace's default ServiceAccount may not exist yet
                try:
                    await objs.create_namespaced_custom_object(
                        "vllm-sleep.io",
                        "v1alpha1",
                        NS,
                        "modeldeployments",
                        model_manifest(name, args),
                    )
                    return
                except ApiException as e:
                    if e.status == 409:
                        return
                    await asyncio.sleep(0.2)
            raise RuntimeError(f"{name} not created")

    await asyncio.gather(*(one(n) for n in names))


def summary(xs: list[float]) -> dict[str, float]:
    from wake_bench import pct

    if not xs:
        return {}
    return {
        "n": len(xs),
        "p50": round(pct(xs, 50), 3),
        "p90": round(pct(xs, 90), 3),
        "p99": round(pct(xs, 99), 3),
        "max": round(max(xs), 3),
        "mean": round(statistics.mean(xs), 3),
    }


async def run(
    args: argparse.Namespace, cluster: Any, procs: Processes, out: dict[str, Any]
) -> None:
    """Fills `out` phase by phase (a failed phase keeps the earlier ones)."""
    import aiohttp
    from kubernetes_asyncio import client, config

    from swap_bench import chat
    from wake_bench import Timeline, follow_agent

    op = procs.pids["operator"]
    pids = cluster.state.pids
    others: dict[str, int | list[int]] = {n: pids[n] for n in ("kube-apiserver", "etcd")}
    others["sim-kubelet"] = [p for n, p in pids.items() if n.startswith("sim-kubelet")]
    others["scheduler+controllers"] = [
        pids[n] for n in ("kube-scheduler", "kube-controller-manager") if n in pids
    ]
    others["gateway"] = procs.pids["gateway"]
    api = await config.new_client_from_config(config_file=cluster.kubeconfig)
    gateway = f"http://127.0.0.1:{procs.gateway_port}"
    names = [f"m{i:04d}" for i in range(args.models)]
    # No connection limit: the agent long-polls hold one connection each, and the concurrent
    # wakes must not queue behind them in aiohttp's default pool of 100.
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=600), connector=aiohttp.TCPConnector(limit=0)
    ) as http:
        await wait_http(http, f"http://{procs.health}/healthz")
        await wait_http(http, f"{gateway}/readyz")
        await asyncio.sleep(2)
        # --- 1. bring-up
        cpu0 = {"operator": proc_cpu(op), **{n: proc_cpu(p) for n, p in others.items()}}
        srv0 = apiserver_requests(cluster)
        tim0 = apiserver_timings(cluster)
        op0 = read_counts(procs.counts["operator"])
        load0 = os.getloadavg()
        if args.profile_apiserver:
            apiserver_profile(cluster, args.profile_apiserver, out_path_of(args))
        t0 = time.time()
        await create_models(api, names, args)
        applied = time.time() - t0
        print(f"created {len(names)} models in {applied:.1f} s", flush=True)
        progress: list[tuple[float, int, float]] = []  # (since t0, asleep, operator cpu s)
        last_print = 0.0
        watch = Phases(api)
        watch.start()
        while True:
            ph = watch.phase
            asleep = sum(1 for p in ph.values() if p == "Asleep")
            now = time.time() - t0
            progress.append((round(now, 2), asleep, round(proc_cpu(op) - cpu0["operator"], 2)))
            if now - last_print > 10:
                print(f"  {now:6.1f} s: {asleep}/{len(names)} asleep", flush=True)
                last_print = now
            if asleep == len(names):
                break
            if now > args.timeout:
                raise TimeoutError(f"{asleep}/{len(names)} asleep after {now:.0f} s")
            await asyncio.sleep(1)
        ready = time.time() - t0
        await watch.stop()
        load_time = args.load_seconds
        cpu1 = {"operator": proc_cpu(op), **{n: proc_cpu(p) for n, p in others.items()}}
        if args.profile or args.profile_kubelet:
            procs.signal_profile()
        await asyncio.sleep(1)  # the probes write their counts every 0.5 s
        srv = dict(sorted((apiserver_requests(cluster) - srv0).items()))
        tim = apiserver_timings(cluster)
        tim.subtract(tim0)
        op_req = dict(sorted((read_counts(procs.counts["operator"]) - op0).items()))
        out["bringup"] = {
            "create_seconds": round(applied, 2),
            "all_asleep_seconds": round(ready, 2),
            "engine_load_seconds": load_time,
            "beyond_load_seconds": round(ready - load_time, 2),
            "cpu_seconds": {n: round(cpu1[n] - cpu0[n], 2) for n in cpu1},
            "operator_rss_mib": round(proc_rss_mib(op), 1),
            "api_requests": {"apiserver (all clients)": srv, "operator": op_req},
            # Mean ms in the apiserver and count, by request kind, and by priority level the
            # mean wait in API Priority and Fairness's queues before a request ran.
            "apiserver_ms": mean_ms(tim, "dur"),
            "flowcontrol_wait_ms": mean_ms(tim, "fcwait", least=1),
            "api_writes_per_model": {
                "apiserver (all clients)": round(writes(srv) / len(names), 2),
                "operator": round(writes(op_req) / len(names), 2),
            },
            "loadavg_before": load0,
            "loadavg_after": os.getloadavg(),
            "progress": progress,
        }
        print(
            json.dumps({k: v for k, v in out["bringup"].items() if k != "progress"}, indent=1),
            flush=True,
        )
        # --- 2. steady state
        await asyncio.sleep(args.settle_seconds)
        c0 = {n: read_counts(p) for n, p in procs.counts.items()}
        o0 = {n: proc_cpu(p) for n, p in others.items()}
        s0, w0 = proc_cpu(op), time.time()
        rss: list[float] = []
        while time.time() - w0 < args.steady_seconds:
            rss.append(proc_rss_mib(op))
            await asyncio.sleep(5)
        await asyncio.sleep(1)  # the probes write their counts every 0.5 s
        s1, w1 = proc_cpu(op), time.time()
        c1 = {n: read_counts(p) for n, p in procs.counts.items()}
        if args.profile or args.profile_kubelet:
            procs.signal_profile()
        if args.trace_memory:
            os.kill(op, signal.SIGUSR2)
            dump = Path(f"{procs.counts['operator']}.mem.0")
            for _ in range(240):  # a snapshot of a big heap takes a while
                if os.path.exists(dump):  # noqa: ASYNC240 - a bench, polling a file
                    break
                await asyncio.sleep(0.5)
        api_rates = {n: rates(c0[n], c1[n], w1 - w0) for n in c0}
        out["steady"] = {
            "seconds": round(w1 - w0, 1),
            "operator_cores": round((s1 - s0) / (w1 - w0), 4),
            "other_cores": {
                n: round((proc_cpu(p) - o0[n]) / (w1 - w0), 3) for n, p in others.items()
            },
            "operator_rss_mib": round(max(rss), 1),
            "api_per_second": api_rates,
            "api_writes_per_second": {
                n: round(sum(v for k, v in r.items() if k.split()[0] in WRITE_VERBS), 3)
                for n, r in api_rates.items()
            },
            "loadavg": os.getloadavg(),
            # Services are the operator's least urgent creates (docs/operator.md): made after
            # the bring-up's other requests, each model's must exist by now.
            "services": len(cluster.kubectl("get", "services", "-n", NS, "-o", "name").split()),
        }
        print(json.dumps(out["steady"]), flush=True)
        # --- 3. concurrent wakes, 4. idle sleeps
        core = client.CoreV1Api(api)
        woken = names[: args.wakes]
        pods = await core.list_namespaced_pod(NS, label_selector="vllm-sleep.io/model")
        ip = {p.metadata.labels["vllm-sleep.io/model"]: p.status.pod_ip for p in pods.items}
        tokens: dict[str, str] = {}
        for n in woken:
            secret = await core.read_namespaced_secret(f"{n}-control-token", NS)
            tokens[n] = base64.b64decode(secret.data["token"]).decode()
        tls = {n: Timeline() for n in woken}
        followers = [
            asyncio.create_task(follow_agent(http, f"http://{ip[n]}:8002", tokens[n], tls[n]))
            for n in woken
        ]
        for _ in range(100):
            if all(tls[n].agent and tls[n].agent[-1][0] == "asleep" for n in woken):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1)
        print(f"waking {len(woken)} models at once", flush=True)
        w_cpu0 = proc_cpu(op)
        tw = time.time()
        lat = await asyncio.gather(
            *(asyncio.wait_for(chat(http, gateway, n), 120) for n in woken), return_exceptions=True
        )
        ok = [x for x in lat if isinstance(x, float)]
        errors = [repr(x) for x in lat if not isinstance(x, float)]
        out["wakes"] = {
            "concurrent": len(woken),
            "latency_s": summary(ok),
            "errors": errors[:5],
            "failed": len(errors),
            "operator_cpu_seconds": round(proc_cpu(op) - w_cpu0, 2),
            "engine_wake_s": summary(
                [
                    awake - waking
                    for n in woken
                    for waking in [next((s for st, s in tls[n].agent if st == "waking"), None)]
                    for awake in [next((s for st, s in tls[n].agent if st == "awake"), None)]
                    if waking is not None and awake is not None
                ]
            ),
        }
        print(json.dumps(out["wakes"]), flush=True)
        deadline = time.time() + args.idle_timeout + 120
        while time.time() < deadline:
            if all(any(st == "asleep" and s > tw for st, s in tls[n].agent) for n in woken):
                break
            await asyncio.sleep(0.5)
        lags, missing = [], 0
        for n in woken:
            try:
                async with http.get(
                    f"http://{ip[n]}:8002/state", headers={"Authorization": f"Bearer {tokens[n]}"}
                ) as r:
                    last = (await r.json()).get("last_activity")
            except aiohttp.ClientError:  # the pod was replaced meanwhile
                last = None
            start = next(
                (s for st, s in tls[n].agent if st in ("draining", "sleeping") and s > tw), None
            )
            if last is None or start is None:
                missing += 1
                continue
            lags.append(start - last)
        out["idle_sleeps"] = {
            "idle_timeout_s": args.idle_timeout,
            "last_request_to_sleep_s": summary(lags),
            "within_timeout_plus_2s": sum(1 for x in lags if x <= args.idle_timeout + 2),
            "did_not_sleep": missing,
        }
        print(json.dumps(out["idle_sleeps"]), flush=True)
        for t in followers:
            t.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    await api.close()


def plot(pattern: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = []
    for f in sorted(RESULTS.glob(pattern)):
        runs.append((f.stem.removeprefix("scale-"), json.loads(f.read_text())))
    if not runs:
        print(f"no bench/results/{pattern}", file=sys.stderr)
        return 1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, r in runs:
        if "bringup" not in r:  # a run that did not finish its bring-up
            continue
        prog = r["bringup"]["progress"]
        n = r["setup"]["models"]
        load = r["bringup"].get("loadavg_after", [None])[0]
        label = name + (" (cProfile)" if r["setup"].get("profile") else "")
        label += f", load {load:.0f}" if load is not None else ""
        ax1.plot([p[0] for p in prog], [100 * p[1] / n for p in prog], label=label)
        cpu = [(p[0], p[2]) for p in prog if p[2] is not None]
        ax2.plot(
            [c[0] for c in cpu], [c[1] for c in cpu], "o-" if len(cpu) < 3 else "-", label=label
        )
    ax1.set(xlabel="seconds since the first create", ylabel="% of models Asleep (pre-warmed)")
    ax2.set(xlabel="seconds since the first create", ylabel="operator CPU seconds")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Scale bench: bring-up of N models on M simulated GPU nodes (label: run)")
    fig.tight_layout()
    out = RESULTS / "scale.png"
    fig.savefig(out, dpi=110)
    print(out)
    return 0


def save(result: dict[str, Any], args: argparse.Namespace, out_path: Path) -> None:
    from wake_bench import _has_uvloop

    result["setup"] = {
        "command": "python bench/scale_bench.py " + " ".join(sys.argv[1:]),
        "models": args.models,
        "nodes": args.nodes,
        "gpus_per_node": args.gpus_per_node,
        "resync_seconds": args.resync_seconds,
        "load_seconds": args.load_seconds,
        "idle_timeout": args.idle_timeout,
        "steady_seconds": args.steady_seconds,
        "agent_health_interval": args.agent_health_interval,
        "fast_probe_seconds": args.fast_probe_seconds,
        "kubelet_shards": args.kubelet_shards or max(1, args.nodes // 50),
        "loadavg_at_save": os.getloadavg(),
        "profile": args.profile,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "uvloop": _has_uvloop(),
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=1) + "\n")


def out_path_of(args: argparse.Namespace) -> Path:
    label = f"{args.models}x{args.nodes}" + (f"-{args.label}" if args.label else "")
    return Path(args.out or RESULTS / f"scale-{label}.json")


def _interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "probe":
        return probe_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=200)
    p.add_argument("--nodes", type=int, default=50)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--resync-seconds", type=float, default=30.0)
    p.add_argument("--load-seconds", type=float, default=5.0)
    p.add_argument("--idle-timeout", type=int, default=20)
    p.add_argument("--settle-seconds", type=float, default=15.0)
    p.add_argument("--steady-seconds", type=float, default=60.0)
    p.add_argument("--wakes", type=int, default=100)
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--profile", action="store_true", help="cProfile the operator")
    p.add_argument(
        "--profile-kubelet",
        action="store_true",
        help="cProfile the sim-kubelet (dumps next to the results file, .kubelet.prof.N)",
    )
    p.add_argument(
        "--agent-health-interval",
        type=float,
        default=30.0,
        help="the simulated agents' /health poll while up (0: as the pods say, 5 s)",
    )
    p.add_argument(
        "--fast-probe-seconds",
        default="off",
        help="the sim-kubelet probes a container every second until ready and this long "
        "after, then at its period; off (the default): every probe at its period, as kubelet; "
        "-1: the sim-kubelet's own default (30)",
    )
    p.add_argument(
        "--trace-memory", type=int, default=0, help="tracemalloc frames in the operator (0: off)"
    )
    p.add_argument(
        "--kubelet-shards",
        type=int,
        default=0,
        help="sim-kubelet processes, each kubelet for every Kth node (0: one per 50 nodes)",
    )
    p.add_argument(
        "--trace-writes", action="store_true", help="log the operator's writes (<name>.writes)"
    )
    p.add_argument(
        "--profile-apiserver",
        type=float,
        default=0,
        help="seconds of kube-apiserver CPU profile from the first create (.apiserver.pprof)",
    )
    p.add_argument("--gateway-workers", type=int, default=1, help="0: do not pass --workers")
    p.add_argument("--label", default="", help="suffix of the results file name")
    p.add_argument("--keep-logs", type=Path, help="copy logs and profiles here")
    p.add_argument("--out", type=Path)
    p.add_argument("--plot", action="store_true", help="plot bench/results/<--plot-glob>")
    p.add_argument(
        "--plot-glob",
        default="scale-1000x200-session*lead*.json",
        help="which results --plot draws (default: the lead's 1,000-model runs of each session)",
    )
    args = p.parse_args()
    if args.plot:
        return plot(args.plot_glob)
    if args.models > args.nodes * args.gpus_per_node:
        p.error("each model takes a whole GPU: --models must be <= --nodes x --gpus-per-node")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from wake_bench import Cluster

    out_path = out_path_of(args)
    signal.signal(signal.SIGTERM, _interrupt)  # stop the cluster on `kill`, too
    if args.agent_health_interval:  # read by the sim-kubelet it starts (containers.py)
        os.environ["VLLM_SLEEP_SIM_AGENT_HEALTH_INTERVAL"] = str(args.agent_health_interval)
    if args.fast_probe_seconds != "-1":  # read by the sim-kubelet (kubelet.py FAST_PROBE_ENV)
        os.environ["VLLM_SLEEP_SIM_FAST_PROBE_SECONDS"] = args.fast_probe_seconds
    if args.trace_writes:  # read by the probes
        os.environ[TRACE_ENV] = "1"
    if args.profile_apiserver:  # read by the control plane it starts (controlplane.py)
        os.environ["VLLM_SLEEP_APISERVER_PROFILING"] = "1"
    if args.profile_kubelet:  # read by the sim-kubelet it starts (testing/kubelet/__main__.py)
        os.environ[KUBELET_PROFILE_ENV] = str(out_path.with_suffix(".kubelet.prof"))
    result: dict[str, Any] = {}
    shards = args.kubelet_shards or max(1, args.nodes // 50)
    cluster = Cluster(
        1.0, gpu_nodes=args.nodes, gpus_per_node=args.gpus_per_node, kubelet_shards=shards
    )
    try:
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.vllm-sleep.io")
        for f in ("namespace.yaml", "rbac.yaml"):
            cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / f))
        cluster.kubectl("create", "namespace", NS)
        procs = Processes(cluster, args)
        asyncio.run(run(args, cluster, procs, result))
    finally:
        save(result, args, out_path)
        if args.keep_logs:
            import shutil

            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for f in cluster.dir.iterdir():
                if f.suffix in (".log", ".writes") or ".prof" in f.name or ".mem." in f.name:
                    shutil.copy(f, args.keep_logs)
            for f in (cluster.dir / "logs").glob("*.log"):
                shutil.copy(f, args.keep_logs)
        cluster.close()
    print(json.dumps({k: v for k, v in result.items() if k != "bringup"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
