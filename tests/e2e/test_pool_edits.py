"""Day-2 edits of a GPU pool and its models while traffic flows (GitOps-style `kubectl apply`).

Four models share the two simulated GPUs of a GPUPool on gpu-node-1 while random requests go
through the gateway, and a seeded random sequence of valid edits is applied meanwhile: a model's
memory share, sleep level, priority, idle timeout, replicas (1 → 2 → 0 → 1), moving it out of the
pool (unpooled, onto gpu-node-0 by its own nodeSelector: the pool's selector wins while pooled)
and back, deleting it and re-creating it under the same name, and on the pool: its node selector
re-spelled, its slots, its host offload budget, a typo in its device resource (no devices) and
its fix, and deleting and re-creating the GPUPool.

After every step: no simulator violation (no request reached a sleeping engine, no OOM at start-up
or wake, no two transitions on one GPU at once; one known limit excepted, `unexpected`), the
awake replicas of each device (by the pool's status) fit its memory, and every answer so far is a
200 or a documented refusal. After the edits stop, every model converges to its spec within a
bounded time, the pool's status lists exactly its pods, and every model with replicas serves.
What the runs found and measured: docs/reliability.md, "Edits while traffic flows".

`VLLM_SLEEP_EDIT_STEPS` sets the number of edits (12 in `make test`, under a minute of edits),
`VLLM_SLEEP_EDIT_SEED` the seed (printed, with the steps, so a failing sequence can be replayed).
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from kubernetes import client

from conftest import Kube

from .conftest import Proc
from .helpers import apply, chat, get_model, model_manifest, wait_for
from .test_pools import violations

STEPS = int(os.environ.get("VLLM_SLEEP_EDIT_STEPS", "12"))
SEED = int(os.environ.get("VLLM_SLEEP_EDIT_SEED", "53"))
POOL_NODE, OUT_NODE = "gpu-node-1", "gpu-node-0"
MODELS = ["m0", "m1", "m2", "m3"]
DEVICE_MEMORY = 80 * 2**30
WAKE_TIMEOUT_S = 20
SHARES = [0.3, 0.45, 0.6, 0.8]
IDLE = ["3s", "8s", "1h"]
REPLICAS_CYCLE = {1: 2, 2: 0, 0: 1}
# Answers a client may get while the platform edits: the documented refusals (docs/gateway.md
# "Hold semantics"), by status and `code`. A model deleted (or not re-listed yet) is a 404.
ALLOWED = {
    (200, None),
    (404, "model_not_found"),
    (429, "queue_full"),
    (503, "wake_timeout"),
    (503, "model_unavailable"),
}
# A request running on a pod Kubernetes deletes (its model deleted) is cut: the engine exits
# under it (vLLM's 500 at the pod: empty up to 0.16, code 500 after; or the gateway's 502).
# The operator's own deletions sleep the replica first. A known limit (docs/reliability.md,
# "Edits while traffic flows"): allowed only while a pod of that model was being deleted
# (`Deletions`), anything else fails the test.
CUT = {(500, "(no error body) ''"), (500, "500"), (502, "upstream_error")}


def pool_spec(pool_selector: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "sharing": "TimeSlicing",
        "deviceMemory": "80Gi",
        "deviceResourceName": "nvidia.com/gpu.shared",
        "nodeSelector": pool_selector,
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        **extra,
    }


@dataclass
class World:
    """The desired state the test applies (the GitOps repository), and what it did."""

    namespace: str
    pool: str
    rng: random.Random
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    present: dict[str, bool] = field(default_factory=dict)
    pool_body: dict[str, Any] = field(default_factory=dict)
    pool_present: bool = True
    done: list[str] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)  # models the test deleted at some point

    def manifest(self, name: str) -> dict[str, Any]:
        return model_manifest(name, self.namespace, **self.models[name])

    def pool_manifest(self) -> dict[str, Any]:
        return {
            "apiVersion": "vllm-sleep.io/v1alpha1",
            "kind": "GPUPool",
            "metadata": {"name": self.pool},
            "spec": self.pool_body,
        }


def base_spec(name: str, pool: str, share: float) -> dict[str, Any]:
    profile = "0.34" if name == "m3" else "legacy"  # level 0 needs vLLM >= 0.31
    resources: dict[str, Any] = {"gpuMemoryUtilization": share, "weightsSize": "2Gi"}
    if name == "m3":
        resources["kvCacheSize"] = "12Gi"  # what a level-0 sleep frees
    return {
        "env": [{"name": "VLLM_SIM_PROFILE", "value": profile}],
        "resources": resources,
        "sleep": {"level": 1, "idleTimeout": "8s", "policy": "Auto"},
        "wake": {"timeout": f"{WAKE_TIMEOUT_S}s"},
        "placement": {"pool": pool, "priority": 0},
        # Unpooled, a model runs on OUT_NODE; pooled, the pool's selector wins (docs/api.md).
        "nodeSelector": {"kubernetes.io/hostname": OUT_NODE},
    }


# -- the edits: each changes the desired state and applies it ------------------------------------


def _apply_model(kube: Kube, w: World, name: str) -> None:
    if w.present[name]:
        apply(kube, w.manifest(name))


def _apply_pool(kube: Kube, w: World) -> None:
    if w.pool_present:
        apply(kube, w.pool_manifest())


def edit_share(kube: Kube, w: World, name: str) -> str:
    share = w.rng.choice(SHARES)
    w.models[name]["resources"]["gpuMemoryUtilization"] = share
    _apply_model(kube, w, name)
    return f"{name} gpuMemoryUtilization {share}"


def edit_level(kube: Kube, w: World, name: str) -> str:
    level = w.rng.choice([0, 1, 2] if name == "m3" else [1, 2])
    w.models[name]["sleep"]["level"] = level
    _apply_model(kube, w, name)
    return f"{name} sleep.level {level}"


def edit_priority(kube: Kube, w: World, name: str) -> str:
    prio = w.rng.choice([-5, 0, 5, 10])
    w.models[name]["placement"]["priority"] = prio
    _apply_model(kube, w, name)
    return f"{name} priority {prio}"


def edit_idle(kube: Kube, w: World, name: str) -> str:
    idle = w.rng.choice(IDLE)
    w.models[name]["sleep"]["idleTimeout"] = idle
    _apply_model(kube, w, name)
    return f"{name} idleTimeout {idle}"


def edit_replicas(kube: Kube, w: World, name: str) -> str:
    now = int(w.models[name].get("replicas", 1))
    # Unpooled, a replica takes a whole GPU of OUT_NODE's two: one model out, at most 2.
    w.models[name]["replicas"] = REPLICAS_CYCLE[now]
    _apply_model(kube, w, name)
    return f"{name} replicas {now} -> {REPLICAS_CYCLE[now]}"


def edit_move(kube: Kube, w: World, name: str) -> str:
    placement = w.models[name]["placement"]
    if placement.get("pool"):
        if any(not w.models[n]["placement"].get("pool") for n in MODELS):
            return edit_priority(kube, w, name)  # one model out at a time (OUT_NODE's 2 GPUs)
        placement.pop("pool")
        _apply_model(kube, w, name)
        return f"{name} moved out of the pool"
    placement["pool"] = w.pool
    _apply_model(kube, w, name)
    return f"{name} moved into the pool"


def edit_recreate_model(kube: Kube, w: World, name: str) -> str:
    if not w.present[name]:
        w.present[name] = True
        _apply_model(kube, w, name)
        return f"{name} re-created"
    kube.kubectl("delete", "mdep", name, "-n", w.namespace, "--wait=false")
    w.present[name] = False
    w.deleted.add(name)
    gap = w.rng.choice([0.0, 1.0, 4.0])
    if gap:
        time.sleep(gap)
        w.present[name] = True
        _apply_model(kube, w, name)
        return f"{name} deleted and re-created after {gap}s"
    return f"{name} deleted"


def edit_pool_selector(kube: Kube, w: World, _name: str) -> str:
    sel = w.pool_body["nodeSelector"]
    if "vllm-sleep.io/simulated" in sel:
        sel.pop("vllm-sleep.io/simulated")
    else:
        sel["vllm-sleep.io/simulated"] = "true"  # the same node, spelled differently
    _apply_pool(kube, w)
    return f"pool nodeSelector {sel}"


def edit_pool_slots(kube: Kube, w: World, _name: str) -> str:
    slots = w.rng.choice([3, 4, 6])
    w.pool_body["slotsPerDevice"] = slots
    _apply_pool(kube, w)
    return f"pool slotsPerDevice {slots}"


def edit_pool_budget(kube: Kube, w: World, _name: str) -> str:
    if "hostOffloadBudget" in w.pool_body:
        w.pool_body.pop("hostOffloadBudget")
    else:
        w.pool_body["hostOffloadBudget"] = "3Gi"  # one level-1 sleeper's weights
    _apply_pool(kube, w)
    return f"pool hostOffloadBudget {w.pool_body.get('hostOffloadBudget')}"


def edit_pool_typo(kube: Kube, w: World, _name: str) -> str:
    """A typo in the device resource (the pool finds no devices), fixed a few seconds later."""
    w.pool_body["deviceResourceName"] = "nvidia.com/gpu.shard"
    _apply_pool(kube, w)
    time.sleep(w.rng.uniform(1, 5))
    w.pool_body["deviceResourceName"] = "nvidia.com/gpu.shared"
    _apply_pool(kube, w)
    return "pool deviceResourceName typo, then fixed"


def edit_recreate_pool(kube: Kube, w: World, _name: str) -> str:
    kube.kubectl("delete", "gpupool", w.pool, "--wait=false")
    w.pool_present = False
    gap = w.rng.choice([0.5, 3.0, 8.0])
    time.sleep(gap)
    w.pool_present = True
    _apply_pool(kube, w)
    return f"pool deleted and re-created after {gap}s"


MODEL_EDITS: list[Callable[[Kube, World, str], str]] = [
    edit_share,
    edit_level,
    edit_priority,
    edit_idle,
    edit_replicas,
    edit_move,
    edit_recreate_model,
]
POOL_EDITS: list[Callable[[Kube, World, str], str]] = [
    edit_pool_selector,
    edit_pool_slots,
    edit_pool_budget,
    edit_pool_typo,
    edit_recreate_pool,
]


def plan_edits(rng: random.Random, steps: int) -> list[tuple[Callable[..., str], str]]:
    """Every kind at least once (when there are steps enough), the rest at random."""
    kinds = [*MODEL_EDITS, *POOL_EDITS]
    chosen = kinds[:steps] + [rng.choice(kinds) for _ in range(steps - len(kinds))]
    rng.shuffle(chosen)
    return [(kind, rng.choice(MODELS)) for kind in chosen]


# -- traffic ------------------------------------------------------------------------------------


Outcome = tuple[str, int, str | None, float, float]  # model, status, code, sent, answered


@dataclass
class Deletions:
    """When each model had a pod being deleted, sampled from the API every 0.5 s."""

    kube: Kube
    namespace: str
    seen: list[tuple[str, float]] = field(default_factory=list)  # (model, monotonic time)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        core = client.CoreV1Api(self.kube.api_client)
        while not self.stop.wait(0.5):
            try:
                pods = core.list_namespaced_pod(self.namespace).items
            except Exception:  # a transient API error: the next sample
                continue
            now = time.monotonic()
            for p in pods:
                if p.metadata.deletion_timestamp:
                    self.seen.append(((p.metadata.labels or {}).get("vllm-sleep.io/model"), now))

    def during(self, model: str, sent: float, answered: float) -> bool:
        return any(m == model and sent - 1 <= t <= answered + 1 for m, t in self.seen)


@dataclass
class Traffic:
    gateway: str
    seed: int
    deletions: Deletions
    outcomes: list[Outcome] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        rng = random.Random(self.seed)
        async with httpx.AsyncClient(timeout=WAKE_TIMEOUT_S * 3 + 60) as http:

            async def worker(k: int) -> None:
                i = 0
                while not self.stop.is_set():
                    model = rng.choice(MODELS)
                    t = time.monotonic()
                    try:
                        r = await http.post(
                            f"{self.gateway}/v1/chat/completions",
                            json=chat(model, f"w{k} r{i}", max_tokens=2),
                        )
                        code = _code(r)
                        self.outcomes.append((model, r.status_code, code, t, time.monotonic()))
                    except httpx.HTTPError as e:
                        self.outcomes.append((model, -1, type(e).__name__, t, time.monotonic()))
                    i += 1
                    await asyncio.sleep(rng.uniform(0.05, 0.6))

            await asyncio.gather(*(worker(k) for k in range(6)))

    def cut(self, o: Outcome) -> bool:
        return (o[1], o[2]) in CUT and self.deletions.during(o[0], o[3], o[4])

    def bad(self) -> list[Outcome]:
        return [o for o in self.outcomes if (o[1], o[2]) not in ALLOWED and not self.cut(o)]

    def summary(self) -> dict[str, int]:
        return dict(Counter(f"{s} {c}" if c else str(s) for _, s, c, _, _ in self.outcomes))


def _code(r: httpx.Response) -> str | None:
    if r.status_code == 200:
        return None
    try:
        return str(r.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return f"(no error body) {r.text[:80]!r}"


# -- oracles ------------------------------------------------------------------------------------


def unexpected(kubelet_admin: httpx.Client, w: World) -> list[dict[str, object]]:
    """The simulator's violations, but one the platform caused by deleting a model: its pods'
    engines exit when Kubernetes' garbage collector deletes them, which nothing orders, and a
    neighbour in its start-up profiling on that GPU fails once (vLLM's "Error in memory
    profiling"; kubelet restarts it). docs/reliability.md, "Known limits"."""
    out = []
    for v in violations(kubelet_admin, w.namespace):
        message = str(v.get("message", ""))
        culprit = message.rpartition("(")[2].split("@", 1)[0]
        if v.get("kind") == "profiling_race" and culprit in w.deleted:
            print(f"(expected: {v['kind']} caused by deleting {culprit}: {message[-80:]})")
            continue
        out.append(v)
    return out


def pool_overcommitted(kube: Kube, w: World) -> list[dict[str, Any]]:
    """The pool's devices whose awake replicas' shares (each pod's own, as built) exceed the
    device's memory, by the pool's status. (`committedBytes` may: it counts a pod being deleted
    at its whole share until it is gone, the scheduler's conservative reading.)"""
    done = kube.kubectl("get", "gpupool", w.pool, "-o", "yaml", check=False)
    if done.returncode != 0:
        return []
    states = (yaml.safe_load(done.stdout).get("status") or {}).get("deviceStates") or []
    pods = client.CoreV1Api(kube.api_client).list_namespaced_pod(w.namespace).items
    share = {
        f"{w.namespace}/{p.metadata.name}": int(
            (p.metadata.annotations or {}).get("vllm-sleep.io/device-bytes", 0)
        )
        for p in pods
    }
    return [d for d in states if sum(share.get(r, 0) for r in d.get("awake") or []) > DEVICE_MEMORY]


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), {})


def converged(kube: Kube, w: World, name: str) -> str | None:
    """Why `name` does not match its spec yet (None: it does)."""
    obj = get_model(kube, w.namespace, name)
    spec, status = obj["spec"], obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"]["generation"]:
        return f"observedGeneration {status.get('observedGeneration')}"
    want = spec.get("replicas", 1)
    phase = status.get("phase")
    replicas = status.get("replicas") or []
    if want == 0:
        ready = condition(status, "Ready")
        ok = phase == "Asleep" and ready.get("reason") == "ScaledToZero" and not replicas
        return None if ok else f"scaled to zero but {phase} {ready} {replicas}"
    states = sorted(r.get("state") for r in replicas)
    if len(replicas) != want or not set(states) <= {"Awake", "Asleep"}:
        return f"replicas {states} (want {want})"
    if phase not in ("Awake", "Asleep"):
        return f"phase {phase}"
    if condition(status, "Scheduled").get("status") != "True":
        return f"Scheduled {condition(status, 'Scheduled')}"
    pods = _pods(kube, w.namespace, name, deleting=True)
    if len(pods) != want or any(p.metadata.deletion_timestamp for p in pods):
        return f"pods {[(p.metadata.name, p.metadata.deletion_timestamp) for p in pods]}"
    pooled = bool(spec.get("placement", {}).get("pool"))
    nodes = {p.spec.node_name for p in pods}
    if nodes != {POOL_NODE if pooled else OUT_NODE}:
        return f"pods on {nodes} (pooled: {pooled})"
    share = f"--gpu-memory-utilization {spec['resources']['gpuMemoryUtilization']:g}"
    for p in pods:
        argv = [" ".join([*(c.command or []), *(c.args or [])]) for c in p.spec.containers]
        if not any(share in a for a in argv):
            return f"pod {p.metadata.name} runs {argv!r}, not {share}"
    return None


def wait_converged(kube: Kube, w: World, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    why: dict[str, str | None] = {}
    while time.monotonic() < deadline:
        for name in MODELS:
            try:
                why[name] = converged(kube, w, name)
            except Exception as e:  # a transient API error, or the model not created yet
                why[name] = repr(e)
        if not any(why.values()):
            return
        time.sleep(0.5)
    raise AssertionError(f"not converged after {timeout:.0f}s: {why}; edits {w.done}")


def _pods(kube: Kube, namespace: str, name: str, deleting: bool = False) -> list[Any]:
    pods = client.CoreV1Api(kube.api_client).list_namespaced_pod(
        namespace, label_selector=f"vllm-sleep.io/model={name}"
    )
    return [p for p in pods.items if deleting or not p.metadata.deletion_timestamp]


def pool_consistent(kube: Kube, w: World) -> str | None:
    """The pool's status matches its members: every pooled replica listed once, at most the
    device's memory committed (None: consistent)."""
    status = yaml.safe_load(kube.kubectl("get", "gpupool", w.pool, "-o", "yaml").stdout).get(
        "status"
    )
    if not status:
        return "no status"
    listed = sorted(m for d in status.get("deviceStates") or [] for m in d.get("models") or [])
    want = sorted(
        f"{w.namespace}/{p.metadata.name}"
        for name in MODELS
        if w.present[name] and w.models[name]["placement"].get("pool")
        for p in _pods(kube, w.namespace, name)
    )
    if listed != want:
        return f"deviceStates list {listed}, pods are {want}"
    over = pool_overcommitted(kube, w)
    return f"overcommitted {over}" if over else None


@pytest.fixture
def edit_pool(kube: Kube) -> Iterator[list[str]]:
    made: list[str] = []
    yield made
    for name in made:
        kube.kubectl("delete", "gpupool", name, "--ignore-not-found", "--wait=false", check=False)


@pytest.mark.timeout(300 + STEPS * 40)
def test_pool_edits_under_traffic(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    edit_pool: list[str],
) -> None:
    from .test_pools import _wait_node_free_of_others

    print(f"\nseed {SEED}, {STEPS} edits (VLLM_SLEEP_EDIT_SEED / VLLM_SLEEP_EDIT_STEPS)")
    rng = random.Random(SEED)
    pool = f"{namespace[-40:]}-edits".strip("-")
    for node in (POOL_NODE, OUT_NODE):
        _wait_node_free_of_others(kube, node, namespace)
    w = World(namespace, pool, rng, pool_body=pool_spec({"kubernetes.io/hostname": POOL_NODE}))
    apply(kube, w.pool_manifest())
    edit_pool.append(pool)
    for name, share in zip(MODELS, (0.8, 0.45, 0.45, 0.3), strict=True):
        w.models[name] = base_spec(name, pool, share)
        w.present[name] = True
        apply(kube, w.manifest(name))
    wait_converged(kube, w, 240)

    deletions = Deletions(kube, namespace)
    watcher = threading.Thread(target=deletions.run, daemon=True)
    watcher.start()
    traffic = Traffic(gateway, SEED, deletions)
    thread = threading.Thread(target=traffic.run, daemon=True)
    thread.start()
    started = time.monotonic()
    try:
        for step, (edit, name) in enumerate(plan_edits(rng, STEPS)):
            what = edit(kube, w, name)
            w.done.append(what)
            print(f"[{time.monotonic() - started:6.1f}s] step {step}: {what}", flush=True)
            time.sleep(rng.uniform(1.0, 4.0))
            assert unexpected(kubelet_admin, w) == [], (w.done, step)
            assert pool_overcommitted(kube, w) == [], w.done
            assert traffic.bad() == [], (w.done, traffic.bad())
        edits_took = time.monotonic() - started
        # Stop editing: whatever was deleted last comes back (the repository's final state).
        for name in MODELS:
            if not w.present[name]:
                w.present[name] = True
                apply(kube, w.manifest(name))
                w.done.append(f"{name} re-created (end)")
    finally:
        traffic.stop.set()
        thread.join(WAKE_TIMEOUT_S * 3 + 90)
        deletions.stop.set()
        watcher.join(10)
    print(f"edits took {edits_took:.1f}s; answers {traffic.summary()}")
    print(f"load average {Path('/proc/loadavg').read_text().split()[:3]}")
    assert traffic.bad() == [], (w.done, traffic.bad())
    assert traffic.summary().get("200", 0) > 0

    t = time.monotonic()
    wait_converged(kube, w, 180)
    wait_for(lambda: pool_consistent(kube, w) is None, 60, what="pool status consistent")
    print(f"converged {time.monotonic() - t:.1f}s after the edits stopped")
    for name in MODELS:
        if w.models[name].get("replicas", 1) == 0:
            continue
        r = httpx.post(f"{gateway}/v1/chat/completions", json=chat(name), timeout=120)
        assert r.status_code == 200, (name, r.text, w.done)
    assert unexpected(kubelet_admin, w) == [], w.done
    assert pool_consistent(kube, w) is None, pool_consistent(kube, w)
