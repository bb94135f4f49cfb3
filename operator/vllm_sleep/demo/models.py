"""The demo's GPUPool, its three ModelDeployments and what the timing model says about them
(pure, no I/O).

The three models share one 80 GiB GPU (the pool's only device) that holds one of them awake at a
time: each takes 60% of the device awake (48 GiB) and about 1.4 GiB asleep, so waking one while
another is awake means evicting it first (a swap).

This module is the single source of `deploy/examples/demo/*.yaml`: `render_examples()` produces
the committed files (a unit test keeps them in sync; `vllm-sleep demo --write-examples DIR`
rewrites them), and `manifest()`/`pool_manifest()` produce exactly what the demo applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ..api.names import API_VERSION, GPU_POOL_KIND, MODEL_DEPLOYMENT_KIND
from ..api.quantity import parse_quantity
from ..testing.sim.config import DEFAULT_RESIDUAL
from ..testing.sim.timing import ITL_S, Timings, default_timings
from ..testing.sim.units import GiB

NAMESPACE = "demo"
PROFILE = "legacy"  # vLLM <= 0.16: a request reaching a sleeping engine crashes it
IMAGE = (
    "vllm/vllm-openai:v0.33.0"  # the sim-kubelet runs any `vllm serve` container as the simulator
)
DEFAULT_TIME_SCALE = 0.1  # 10x faster than a GPU: a 16Gi load takes ~4 s instead of ~39 s
FAST_TIME_SCALE = 0.05
DEFAULT_IDLE_TIMEOUT = "10s"
DEVICE_GIB = 80.0  # the simulated H100 of the demo node
POOL = "demo-gpu"
POOL_NODE = "demo-gpu-0"  # gpunode.NODE: the demo's own one-GPU simulated node
DEVICE_CLASS = "sim-gpu.vllm-sleep.io"  # the sim-kubelet's DRA DeviceClass
DEMO_TAINT_KEY = "vllm-sleep.io/demo"  # gpunode.TAINT_KEY: keeps other pods off the demo GPU


@dataclass(frozen=True)
class DemoModel:
    name: str
    model: str
    weights: str  # Kubernetes quantity, drives the simulator's timing and memory
    gpu_memory_utilization: float = 0.6  # 48 of 80 GiB: two never fit awake together

    @property
    def weights_bytes(self) -> int:
        return int(parse_quantity(self.weights))

    def gpu_gib(self, device_gib: float = DEVICE_GIB) -> tuple[float, float]:
        """GPU memory held awake (the engine's share) and asleep (the residual: CUDA context
        etc., the simulator's default, testing/sim/config.py)."""
        return device_gib * self.gpu_memory_utilization, DEFAULT_RESIDUAL / GiB

    @property
    def kv_bytes(self) -> int:
        """The KV cache vLLM makes of the share: share - weights - the non-torch residual."""
        share = int(DEVICE_GIB * GiB * self.gpu_memory_utilization)
        return max(0, share - self.weights_bytes - DEFAULT_RESIDUAL)

    @property
    def timings(self) -> Timings:
        """Unscaled (real-GPU-equivalent) durations from the simulator's H100 timing model, for
        the demo's engines (legacy profile, this KV cache)."""
        return default_timings(self.weights_bytes, self.kv_bytes, profile=PROFILE)


MODELS: tuple[DemoModel, ...] = (
    DemoModel("llama-8b", "meta-llama/Llama-3.1-8B-Instruct", "16Gi"),
    DemoModel("qwen-7b", "Qwen/Qwen2.5-7B-Instruct", "15Gi"),
    DemoModel("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.3", "14Gi"),
)
CHAT_MODEL = MODELS[0]


def by_name(name: str) -> DemoModel:
    for m in MODELS:
        if m.name == name:
            return m
    raise KeyError(name)


def engine_env(total_scale: float, host_scale: float) -> list[dict[str, str]]:
    """Simulator settings for the vLLM container.

    - `legacy` profile (vLLM <= 0.16): a request reaching a sleeping engine would crash it, so
      a violation count of zero is a strong statement.
    - The sim-kubelet multiplies its own (host) time scale with the engine's; when the cluster
      runs at a different host scale than the demo wants, the engine makes up the difference.
    - Tokens stream at a real GPU's pace (~50 tokens/s) even though everything else runs
      faster, so the stream is visible in the terminal; token pace plays no part in sleep/wake.
    """
    env = [{"name": "VLLM_SIM_PROFILE", "value": PROFILE}]
    engine_scale = total_scale / host_scale
    if abs(engine_scale - 1.0) > 1e-9:
        env.append({"name": "VLLM_SIM_TIME_SCALE", "value": _num(engine_scale)})
    env.append({"name": "VLLM_SIM_ITL_SECONDS", "value": _num(ITL_S / total_scale)})
    return env


def manifest(
    m: DemoModel,
    namespace: str = NAMESPACE,
    *,
    total_scale: float = DEFAULT_TIME_SCALE,
    host_scale: float = DEFAULT_TIME_SCALE,
    idle_timeout: str = DEFAULT_IDLE_TIMEOUT,
    pool: str = POOL,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": MODEL_DEPLOYMENT_KIND,
        "metadata": {"name": m.name, "namespace": namespace},
        "spec": {
            "model": m.model,
            "image": IMAGE,
            "replicas": 1,
            "env": engine_env(total_scale, host_scale),
            "resources": {
                "gpuMemoryUtilization": m.gpu_memory_utilization,
                "weightsSize": m.weights,
            },
            "placement": {"pool": pool},
            "sleep": {"level": 1, "idleTimeout": idle_timeout, "policy": "Auto"},
            "wake": {"onRequest": True, "timeout": "2m"},
        },
    }


def pool_manifest(name: str = POOL, node: str = POOL_NODE) -> dict[str, Any]:
    """One DRA device: the demo node's only GPU, shared by every demo model."""
    return {
        "apiVersion": API_VERSION,
        "kind": GPU_POOL_KIND,
        "metadata": {"name": name},
        "spec": {
            "sharing": "DRA",
            "deviceClassName": DEVICE_CLASS,
            "deviceMemory": f"{DEVICE_GIB:g}Gi",
            "nodeSelector": {"kubernetes.io/hostname": node},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"key": DEMO_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
            ],
        },
    }


POOL_HEADER = """\
# Written by `vllm-sleep demo --write-examples` from operator/vllm_sleep/demo/models.py;
# `make demo` applies this: one GPUPool holding the demo node's only GPU (80 GiB), shared by the
# three demo models through one DRA ResourceClaim. Each takes 60% of it awake, so one is awake at
# a time and a request for a sleeping model swaps it in. On real GPUs use your DRA DeviceClass
# (e.g. gpu.nvidia.com) and your GPU nodes' selector and taints.
"""

EXAMPLE_HEADER = """\
# Written by `vllm-sleep demo --write-examples` from operator/vllm_sleep/demo/models.py;
# `make demo` applies this, placed in the demo-gpu GPUPool (demo-gpu.yaml). On the local cluster
# (simulated GPU nodes) the image's `vllm serve` runs the simulator: legacy vLLM (<= 0.16) behaviour, 10x faster than an H100 (the demo's
# cluster runs at time scale {scale}), tokens at a real GPU's ~50/s so you can watch them stream.
# On real GPUs drop `env` and set `idleTimeout` to something like 10m.
"""


def render_examples(scale: float = DEFAULT_TIME_SCALE) -> dict[str, str]:
    """File name -> YAML text, for deploy/examples/demo/."""
    header = EXAMPLE_HEADER.format(scale=_num(scale))
    out = {f"{POOL}.yaml": POOL_HEADER + yaml.safe_dump(pool_manifest(), sort_keys=False)}
    for m in MODELS:
        body = manifest(m, total_scale=scale, host_scale=scale)
        out[f"{m.name}.yaml"] = header + yaml.safe_dump(body, sort_keys=False)
    return out


def real_equivalent_ttft(measured: float, m: DemoModel, scale: float) -> float:
    """What the measured first-token time would be on a GPU.

    Only the engine's work (wake, first token) ran at `scale`; the gateway, the operator and the
    apiserver ran in real time. So add back the engine time the scale saved.
    """
    t = m.timings
    return measured + (t.wake + t.ttft) * (1.0 - scale)


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    return f"{s:.1f} s"


def _num(x: float) -> str:
    """Short decimal for env values and headers: 0.1, 2, 0.2 (not 0.20000000000000001)."""
    return f"{x:.6g}"
