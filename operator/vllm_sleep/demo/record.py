"""Samples the demo GPU for the timeline: each engine from the simulator, the pool's accounting.

The simulator is the ground truth here: the demo node's sim-kubelet lists its pods (`/pods`),
and each engine answers `/_sim/state` on the pod's private loopback twin (where vLLM listens
inside the pod) with its state, the bytes it holds and the whole device's use. The operator's
view, the bytes it has committed on the device, comes from `GPUPool.status.deviceStates`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from ..api.names import GPU_POOL_PLURAL, GROUP, VERSION, VLLM_PORT
from ..testing.kubelet.ips import private_twin
from .kube import Cluster
from .timeline import Engine, Sample, Timeline, band
from .track import Tracker


@dataclass
class DeviceView:
    """The latest look at the device, for the live view."""

    total_bytes: int
    used_bytes: int | None = None
    committed_bytes: int | None = None
    held: dict[str, int] = field(default_factory=dict)
    engines: dict[str, Engine] = field(default_factory=dict)


def pod_models(tracker: Tracker) -> dict[str, str]:
    """Pod name -> model, from the ModelDeployments' status."""
    return {r.pod: name for name, v in tracker.views.items() for r in v.replicas}


def committed(pool: dict[str, Any] | None) -> int | None:
    states = ((pool or {}).get("status") or {}).get("deviceStates") or []
    values = [d.get("committedBytes") for d in states if d.get("committedBytes") is not None]
    return int(sum(values)) if values else None


@dataclass
class Recorder:
    """Polls the demo node and the pool; appends one timeline sample per `poll`."""

    cluster: Cluster
    admin_url: str
    namespace: str
    pool: str
    timeline: Timeline
    origin: float  # time.monotonic() of the timeline's zero
    last: DeviceView = field(init=False)
    _http: httpx.Client = field(init=False, default_factory=lambda: httpx.Client(timeout=1.0))

    def __post_init__(self) -> None:
        self.last = DeviceView(self.timeline.device_bytes)

    def close(self) -> None:
        self._http.close()

    def poll(self, tracker: Tracker, now: float) -> DeviceView:
        engines, used = self._engines(pod_models(tracker))
        view = DeviceView(
            self.timeline.device_bytes,
            used_bytes=used,
            committed_bytes=committed(self._pool()),
            held={m: e.held_bytes for m, e in engines.items()},
            engines=engines,
        )
        bands = {}
        for name in tracker.names:
            v = tracker.views.get(name)
            bands[name] = band(v.phase if v else None, engines.get(name))
        self.timeline.add(
            Sample(
                at=max(now - self.origin, self.timeline.end),
                bands=bands,
                held=view.held,
                used_bytes=used,
                committed_bytes=view.committed_bytes,
                last_sleep={n: v.last_sleep for n, v in tracker.views.items() if v.last_sleep},
                last_wake={n: v.last_wake for n, v in tracker.views.items() if v.last_wake},
            )
        )
        self.last = view
        return view

    def violations(self) -> list[dict[str, Any]]:
        r = self._http.get(
            f"{self.admin_url}/violations", params={"namespace": self.namespace}, timeout=10
        )
        r.raise_for_status()
        return list(r.json()["violations"])

    def _engines(self, models: dict[str, str]) -> tuple[dict[str, Engine], int | None]:
        try:
            pods = self._http.get(f"{self.admin_url}/pods").json()["pods"]
        except (httpx.HTTPError, ValueError, KeyError):
            return {}, None
        out: dict[str, Engine] = {}
        used: int | None = None
        for p in pods:
            ns, _, name = str(p.get("pod", "")).partition("/")
            model = models.get(name)
            if ns != self.namespace or model is None or not p.get("ip"):
                continue
            try:
                snap = self._http.get(f"http://{private_twin(p['ip'])}:{VLLM_PORT}/_sim/state")
                state = snap.json()
            except (httpx.HTTPError, ValueError):
                continue  # not listening yet (loading) or gone
            out[model] = Engine(
                state=str(state.get("state")),
                transition=state.get("transition"),
                held_bytes=int(state.get("held_bytes") or 0),
            )
            used = int((state.get("device") or {}).get("used_bytes") or 0)
        return out, used

    def _pool(self) -> dict[str, Any] | None:
        from kubernetes import client

        try:
            obj: dict[str, Any] = client.CustomObjectsApi(  # type: ignore[assignment]
                self.cluster.api
            ).get_cluster_custom_object(GROUP, VERSION, GPU_POOL_PLURAL, self.pool)
            return obj
        except client.ApiException:
            return None
