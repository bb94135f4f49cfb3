"""Wake through the gateway: how much a wake-on-request adds over the engine's own wake.

    .venv/bin/python bench/wake_bench.py [--cycles 200] [--time-scale 0.1]
                                         [--out bench/results/wake.json]
                                         [--png docs/img/wake-added.png]
    .venv/bin/python bench/wake_bench.py --plot bench/results/wake.json [--png ...]

Starts its own local cluster (control plane + sim-kubelet on tmpfs, cached binaries), the
operator and the gateway as processes with their ServiceAccounts' RBAC, and one model
(`idleTimeout: 1s`). Each cycle waits until the model is asleep (agent and gateway agree), sends
one chat request (1 token) through the gateway and times it, then sends the same request again
while awake (the request's own cost). Meanwhile the bench follows, with wall-clock arrival
times on this host: the demand Lease (watch), the agent's state (long-poll of its control
`/state`: `waking` since / `awake` since), and the pod (watch: condition `vllm-sleep.io/awake`,
then `Ready`).

    added = (through the gateway while asleep) - (agent-reported wake) - (same request awake)

and the phases of the added time: gateway -> Lease seen, request -> agent starts waking (since
the agent-initiated wake, the agent's own reaction to the held request: the model's sleeps
grant it, policy Auto outside a pool; before, the operator's reaction to the Lease or to the
agent's held count, whichever it heard first), agent awake -> response (the agent releasing the request it held, minus the request's own
cost). The gateway sends a held request to the asleep pod's agent, so the operator's awake
condition (agent awake -> condition seen) and the kubelet's Ready (condition -> Ready) are
reported too but are no longer on the request's path. Each counted cycle says who started
its wake (`woken_by` in the agent's report): `request` (the agent) or `operator` (an older
agent, an operator wake that got there first, or one that joined the agent's: the operator
counts a wake it joined, so the report gives it to the operator); the results count both.

`--png` draws the distribution (matplotlib): the added time per cycle in run order, and the
cumulative distribution of the added time and of its two largest phases; `--plot FILE` draws
it again from a results file without running anything.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parents[1]
NS, MODEL = "bench", "wake"
AWAKE_COND = "vllm-sleep.io/awake"


def sim_model_manifest(
    name: str,
    namespace: str,
    *,
    env: dict[str, str],
    util: float,
    weights: str,
    sleep: dict[str, Any],
    image: str = "vllm/vllm-openai:v0.34.0",
    **spec: Any,
) -> dict[str, Any]:
    """A ModelDeployment of one replica the simulator serves: `env` configures the simulator
    (VLLM_SIM_*), `spec` adds fields (placement)."""
    return {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": "meta-llama/Llama-3.1-8B-Instruct",
            "image": image,
            "replicas": 1,
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": {"gpuMemoryUtilization": util, "weightsSize": weights},
            "sleep": sleep,
            **spec,
        },
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Cluster:
    def __init__(
        self, time_scale: float, gpu_nodes: int = 1, gpus_per_node: int = 1, kubelet_shards: int = 1
    ) -> None:
        from vllm_sleep.testing.cluster import build, controlplane
        from vllm_sleep.testing.cluster.simnodes import start_simulated

        self._cp = controlplane
        bins = build.ensure_all()
        root = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
        self.dir = root / f"vso-wake-bench-{os.getpid()}"
        self.state = start_simulated(
            self.dir,
            bins,
            gpu_nodes=gpu_nodes,
            gpus_per_node=gpus_per_node,
            time_scale=time_scale,
            kubelet_shards=kubelet_shards,
        )
        self.kubectl_bin = str(bins["k8s"] / "kubectl")
        self.kubeconfig = self.state.kubeconfig
        self.procs: list[subprocess.Popen[bytes]] = []

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=True,
            input=input,
            timeout=120,
        ).stdout

    def sa_kubeconfig(self, sa: str) -> str:
        token = self.kubectl(
            "create", "token", sa, "-n", "vllm-sleep-system", "--duration=6h"
        ).strip()
        from vllm_sleep.testing.cluster.tokens import kubeconfig_with_token

        out = self.dir / f"{sa}.kubeconfig"
        return str(kubeconfig_with_token(Path(self.kubeconfig), sa, token, out))

    def spawn(self, name: str, argv: list[str], kubeconfig: str) -> None:
        env = {**os.environ, "KUBECONFIG": kubeconfig, "PYTHONUNBUFFERED": "1"}
        log = (self.dir / f"{name}.log").open("ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "vllm_sleep.cli", *argv],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        self._cp.stop(self.state)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_stack(cluster: Cluster, gateway_port: int, namespace: str) -> None:
    """CRDs, the project's namespace and RBAC, the bench's namespace, then the operator
    (`cluster.procs[0]`) and the gateway (`procs[1]`) as processes, each with its
    ServiceAccount's token (the RBAC the chart grants, never admin)."""
    cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds"))
    for crd in ("modeldeployments", "gpupools"):
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{crd}.vllm-sleep.io")
    for f in ("namespace.yaml", "rbac.yaml"):
        cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "base" / f))
    cluster.kubectl("create", "namespace", namespace)
    cluster.spawn(
        "operator",
        [
            "operator",
            f"--metrics-bind=127.0.0.1:{free_port()}",
            f"--health-bind=127.0.0.1:{free_port()}",
        ],
        cluster.sa_kubeconfig("vllm-sleep-operator"),
    )
    gw_cfg = cluster.sa_kubeconfig("vllm-sleep-gateway")
    cluster.spawn(
        "gateway",
        ["gateway", "--host=127.0.0.1", f"--port={gateway_port}", f"--kubeconfig={gw_cfg}"],
        gw_cfg,
    )


class Timeline:
    """Wall-clock arrival times of what the bench observes, appended by background tasks."""

    def __init__(self) -> None:
        self.lease: list[float] = []  # a new renewTime seen
        self.agent: list[tuple[str, float]] = []  # (state, since) from the agent
        self.held: list[float] = []  # the agent's report of a held request arrived here
        self.woken_by: dict[float, str | None] = {}  # awake since -> who started that wake
        self.awake_cond: list[float] = []  # awake condition turned True
        self.ready: list[float] = []  # Ready turned True (with awake True)

    @staticmethod
    def first_after(xs: list[float], t: float) -> float | None:
        return next((x for x in xs if x >= t), None)


async def follow_watches(api: Any, tl: Timeline) -> None:
    from kubernetes_asyncio import client, watch

    core, coord = client.CoreV1Api(api), client.CoordinationV1Api(api)

    async def pods() -> None:
        was: dict[str, bool] = {AWAKE_COND: False, "Ready": False}
        while True:
            async with watch.Watch().stream(
                core.list_namespaced_pod, NS, label_selector=f"vllm-sleep.io/model={MODEL}"
            ) as stream:
                async for ev in stream:
                    now = time.time()
                    conds = {c.type: c.status for c in (ev["object"].status.conditions or [])}
                    awake = conds.get(AWAKE_COND) == "True"
                    ready = awake and conds.get("Ready") == "True"
                    if awake and not was[AWAKE_COND]:
                        tl.awake_cond.append(now)
                    if ready and not was["Ready"]:
                        tl.ready.append(now)
                    was = {AWAKE_COND: awake, "Ready": ready}

    async def leases() -> None:
        last = None
        while True:
            async with watch.Watch().stream(coord.list_namespaced_lease, NS) as stream:
                async for ev in stream:
                    renew = ev["object"].spec.renew_time
                    if renew is not None and renew != last:
                        last = renew
                        tl.lease.append(time.time())

    await asyncio.gather(pods(), leases())


async def follow_agent(session: aiohttp.ClientSession, url: str, token: str, tl: Timeline) -> None:
    version = None
    headers = {"Authorization": f"Bearer {token}"}
    while True:
        params = {"wait": "30"} if version is None else {"wait": "30", "version": str(version)}
        try:
            async with session.get(f"{url}/state", params=params, headers=headers) as r:
                s = await r.json()
        except aiohttp.ClientError:
            await asyncio.sleep(0.2)
            continue
        if s["version"] != version:
            tl.agent.append((s["state"], s["since"]))
            if s["state"] == "awake":
                tl.woken_by[s["since"]] = s.get("woken_by")
            if s.get("held") and s["state"] == "asleep":
                tl.held.append(time.time())
            version = s["version"]


async def run(args: argparse.Namespace, cluster: Cluster) -> dict[str, Any]:
    from kubernetes_asyncio import client, config

    api = await config.new_client_from_config(config_file=cluster.kubeconfig)
    core = client.CoreV1Api(api)
    objs = client.CustomObjectsApi(api)
    gateway = f"http://127.0.0.1:{args.gateway_port}"
    tl = Timeline()
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:

        async def phase() -> str | None:
            obj = await objs.get_namespaced_custom_object(
                "vllm-sleep.io", "v1alpha1", NS, "modeldeployments", MODEL
            )
            return (obj.get("status") or {}).get("phase")

        async def gateway_view() -> dict[str, Any]:
            try:
                async with http.get(f"{gateway}/v1/models") as r:
                    data = (await r.json())["data"]
            except aiohttp.ClientConnectorError:  # the gateway is still starting
                return {}
            return next((m for m in data if m["id"] == MODEL), {})

        async def until(pred: Any, what: str, timeout: float = 180) -> None:
            deadline = time.monotonic() + timeout
            while not await pred():
                if time.monotonic() > deadline:
                    raise TimeoutError(what)
                await asyncio.sleep(0.05)

        await until(lambda: _eq(phase(), "Asleep"), "first pre-warm sleep")
        pod = (
            await core.list_namespaced_pod(NS, label_selector=f"vllm-sleep.io/model={MODEL}")
        ).items[0]
        secret = await core.read_namespaced_secret(f"{MODEL}-control-token", NS)
        token = base64.b64decode(secret.data["token"]).decode()
        tasks = [
            asyncio.create_task(follow_watches(api, tl)),
            asyncio.create_task(follow_agent(http, f"http://{pod.status.pod_ip}:8002", token, tl)),
        ]

        async def asleep_everywhere() -> bool:
            view = await gateway_view()
            agent_asleep = bool(tl.agent) and tl.agent[-1][0] == "asleep"
            return agent_asleep and view.get("awake_replicas") == 0 and await phase() == "Asleep"

        async def timed() -> float:
            t = time.perf_counter()
            async with http.post(f"{gateway}/v1/chat/completions", json=body) as r:
                await r.read()
                assert r.status == 200, (r.status, await r.text())
            return time.perf_counter() - t

        cycles: list[dict[str, float]] = []
        starts: list[tuple[float, float]] = []  # per counted cycle: request sent, agent waking
        missed = 0
        woken_by: dict[str, int] = {}  # counted cycles by who started the wake
        for i in range(args.cycles + 1):  # cycle 0 warms the path up and is not counted
            await until(asleep_everywhere, f"cycle {i}: asleep")
            await asyncio.sleep(0.5)  # let every watch settle
            t0 = time.time()
            total = await timed()
            awake_cost = min([await timed() for _ in range(3)])
            # The watches catch up (a loaded host can take seconds to show Ready).
            deadline = time.monotonic() + 10
            while not (Timeline.first_after(tl.ready, t0) and Timeline.first_after(tl.lease, t0)):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            waking = next((s for st, s in tl.agent if st == "waking" and s >= t0 - 0.01), None)
            awake = next((s for st, s in tl.agent if st == "awake" and s >= t0), None)
            if waking is None or awake is None:  # the long-poll missed a state: not counted
                print(f"cycle {i:2d}: agent states missed: {tl.agent[-3:]}", flush=True)
                missed += 1
                continue
            lease = Timeline.first_after(tl.lease, t0)
            held = Timeline.first_after(tl.held, t0)
            cond = Timeline.first_after(tl.awake_cond, t0)
            ready = Timeline.first_after(tl.ready, t0)
            if not (lease and cond and ready):  # a watch fell behind: not counted
                print(f"cycle {i:2d}: watch missed: {(lease, cond, ready)}", flush=True)
                missed += 1
                continue
            wake = awake - waking
            row = {
                "total": total,
                "engine_wake": wake,
                "request_awake": awake_cost,
                "added": total - wake - awake_cost,
                "to_lease": lease - t0,
                "lease_to_waking": waking - lease,
                "request_to_waking": waking - t0,
                "awake_to_response": (t0 + total) - awake - awake_cost,
                # The operator's condition and the kubelet's Ready: off the request's path.
                "awake_to_condition": cond - awake,
                "condition_to_ready": ready - cond,
            }
            if held is not None and held < waking:
                # The agent's held report as a long-poll (the operator's too) received it, and
                # from there the operator's pass up to the agent's wake starting. Missing when
                # the long-poll's answer already said `waking` (it reports the latest state).
                row["to_held_seen"] = held - t0
                row["held_seen_to_waking"] = waking - held
            by = str(tl.woken_by.get(awake))
            if i:
                cycles.append(row)
                starts.append((t0, waking))
                woken_by[by] = woken_by.get(by, 0) + 1
            print(
                f"cycle {i:2d} (woken by {by}): total {total * 1e3:7.1f} ms  "
                f"wake {wake * 1e3:6.1f}  "
                f"added {row['added'] * 1e3:6.1f}  (lease {row['to_lease'] * 1e3:5.1f}, "
                f"to waking {row['request_to_waking'] * 1e3:5.1f}, "
                f"release {row['awake_to_response'] * 1e3:5.1f}; "
                f"condition {row['awake_to_condition'] * 1e3:5.1f}, "
                f"kubelet Ready {row['condition_to_ready'] * 1e3:5.1f})",
                flush=True,
            )
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await api.close()
    decisions = wake_decisions(cluster.dir / "operator.log", starts)
    for (t0, _), row, decided in zip(starts, cycles, decisions, strict=True):
        if decided is not None:
            # The operator's pass: from the request to its plan's Wake (its log line), and from
            # there to the agent's wake starting (the annotation write and the /wake_up call).
            row["request_to_decision"] = decided - t0
            row["decision_to_waking"] = row["request_to_waking"] - row["request_to_decision"]
    keys = dict.fromkeys(k for c in cycles for k in c)
    series = {k: [c[k] for c in cycles if k in c] for k in keys}
    summary = {
        k: {
            "p50_ms": round(pct(xs, 50) * 1e3, 2),
            "p99_ms": round(pct(xs, 99) * 1e3, 2),
            "mean_ms": round(statistics.mean(xs) * 1e3, 2),
            "cycles": len(xs),
        }
        for k, xs in series.items()
    }
    return {"summary": summary, "cycles": cycles, "missed_cycles": missed, "woken_by": woken_by}


def wake_decisions(log: Path, starts: list[tuple[float, float]]) -> list[float | None]:
    """Per cycle, when the operator logged the plan that wakes the model (its log's clock is
    this host's, millisecond resolution); None when no such line falls in the cycle."""
    import datetime

    decided: list[float] = []
    for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
        if f"{NS}/{MODEL}: (Wake(" in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            decided.append(stamp.timestamp())
    out: list[float | None] = []
    for t0, waking in starts:
        # The line is written once the plan is made, before the agent call: a few ms of
        # slack for the log's clock rounding.
        out.append(next((d for d in decided if t0 - 0.002 <= d <= waking + 0.002), None))
    return out


async def _eq(coro: Any, want: str) -> bool:
    return bool(await coro == want)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cycles", type=int, default=200)
    p.add_argument("--time-scale", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "wake.json")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "wake-added.png")
    p.add_argument("--plot", type=Path, help="only draw --png from this results file")
    p.add_argument("--keep-logs", type=Path, help="copy the operator's and gateway's logs here")
    args = p.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.png)
        return 0
    args.gateway_port = free_port()
    cluster = Cluster(args.time_scale)
    try:
        start_stack(cluster, args.gateway_port, NS)
        manifest = sim_model_manifest(
            MODEL,
            NS,
            image="vllm/vllm-openai:v0.33.0",
            env={"VLLM_SIM_PROFILE": "legacy"},
            util=0.4,
            weights="2Gi",
            sleep={"level": 1, "idleTimeout": "1s", "policy": "Auto"},
        )
        for _ in range(50):  # the ServiceAccount admission needs the namespace's default SA
            try:
                cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))
                break
            except subprocess.CalledProcessError:
                time.sleep(0.2)
        result = asyncio.run(run(args, cluster))
    finally:
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in cluster.dir.glob("*.log"):
                shutil.copy(log, args.keep_logs / log.name)
        cluster.close()
    result["setup"] = {
        "cycles": args.cycles,
        "time_scale": args.time_scale,
        "weights": "2Gi, level 1",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "uvloop": _has_uvloop(),
        "loadavg_at_end": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    plot(result, args.png)
    return 0


def plot(result: dict[str, Any], png: Path) -> None:
    """Added time per cycle, and the distributions of it and of its two largest phases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = result["cycles"]
    ms = {k: [c[k] * 1e3 for c in cycles if k in c] for k in cycles[0]}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), dpi=80)
    ax1.plot(range(1, len(cycles) + 1), ms["added"], ".", markersize=4, label="added")
    ax1.axhline(20, color="red", lw=0.8, ls="--", label="target p99 (20 ms)")
    ax1.set(xlabel="cycle", ylabel="ms", title=f"added by the wake path, {len(cycles)} cycles")
    series = {
        "added": "added (total - engine wake - request awake)",
        "request_to_waking": "request in -> agent starts waking",
        "awake_to_response": "agent awake -> response (- request awake)",
    }
    for key, label in series.items():
        xs = sorted(ms[key])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        p50, p99 = pct(xs, 50), pct(xs, 99)
        ax2.step(xs, ys, where="post", label=f"{label}: p50 {p50:.1f}, p99 {p99:.1f}")
    ax2.axvline(20, color="red", lw=0.8, ls="--")
    # The slowest few cycles would squeeze the rest into a corner: cut at the added p99 and say
    # how many lie beyond.
    top = pct(ms["added"], 99) * 1.15
    beyond = sum(x > top for x in ms["added"])
    ax1.set_ylim(min(0.0, *ms["added"]) - 2, top)
    ax2.set_xlim(min(0.0, *ms["awake_to_response"]) - 2, top)
    if beyond:
        ax1.set_title(f"added by the wake path, {len(cycles)} cycles ({beyond} above {top:.0f} ms)")
    ax2.axhline(0.99, color="grey", lw=0.5)
    ax2.set(xlabel="ms", ylabel="share of cycles", title="cumulative distribution", ylim=(0, 1.01))
    ax1.grid(alpha=0.3)
    ax2.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    ax2.legend(fontsize=7, loc="lower right")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, bbox_inches="tight")
    print(f"wrote {png}")


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
