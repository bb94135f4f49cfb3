"""Manifest builders: golden files for the shapes, properties for the rules.

Goldens live in tests/unit/golden/; regenerate with `UPDATE_GOLDEN=1 pytest tests/unit/reconcile`
and review the diff: every changed line changes what runs in users' clusters.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vllm_sleep.api import GPUPoolSpec, ModelDeploymentSpec, names
from vllm_sleep.reconcile import builders
from vllm_sleep.reconcile.builders import GpuAttachment, Owner

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
OWNER = Owner(name="llama-8b", namespace="team-a", uid="0b5c0d3e-uid")
AGENT = "ghcr.io/vllm-sleep/vllm-sleep-operator:0.1.0"


def check_golden(name: str, obj: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump(obj, sort_keys=False, width=100)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} differs; review, then UPDATE_GOLDEN=1"


def spec(**over: Any) -> ModelDeploymentSpec:
    base: dict[str, Any] = {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "image": "vllm/vllm-openai:v0.33.0",
        "resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
    }
    base.update(over)
    return ModelDeploymentSpec.model_validate(base)


FULL = {
    "servedModelName": "llama-3.1-8b",
    "args": ["--max-model-len=8192", "--enable-prefix-caching"],
    "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
    "imagePullPolicy": "IfNotPresent",
    "resources": {
        "gpuMemoryUtilization": 0.9,
        "weightsSize": "140Gi",
        "gpus": 2,
        "cpu": "8",
        "memory": "32Gi",
    },
    "wake": {"timeout": "5m", "maxQueued": 64},
    "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "serviceAccountName": "models",
    "imagePullSecrets": [{"name": "registry"}],
    "priorityClassName": "inference",
    "podLabels": {"team": "a", names.LABEL_MODEL: "spoofed"},
    "podAnnotations": {"prometheus.io/scrape": "true"},
    "agentImage": "registry.example/vllm-sleep:dev",
}
POOL = {"deviceMemory": "80Gi", "nodeSelector": {"pool": "h100"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "over", "replica", "gpu"),
    [
        ("pod-minimal", {}, 0, None),
        ("pod-full", FULL, 1, None),
        ("pod-level2", {"sleep": {"level": 2}, "resources": {"gpuMemoryUtilization": 0.3}}, 0, None),
        ("pod-kv-size", {"resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi", "kvCacheSize": "20Gi"}}, 0, None),
        ("pod-dra", {}, 0, GpuAttachment(GPUPoolSpec.model_validate(POOL), claim="h100-node-0-gpu-0")),
        (
            "pod-timeslicing",
            {},
            0,
            GpuAttachment(
                GPUPoolSpec.model_validate(
                    {**POOL, "sharing": "TimeSlicing", "deviceResourceName": "nvidia.com/gpu.shared"}
                )
            ),
        ),
    ],
)  # fmt: skip
def test_pod_golden(
    name: str, over: dict[str, Any], replica: int, gpu: GpuAttachment | None
) -> None:
    check_golden(name, builders.model_pod(OWNER, spec(**over), replica, agent_image=AGENT, gpu=gpu))


def test_children_golden() -> None:
    check_golden("service", builders.model_service(OWNER, spec(servedModelName="org/llama")))
    check_golden("secret", builders.control_token_secret(OWNER, "t0ken"))
    check_golden("lease", builders.demand_lease(OWNER))


def _vllm(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["containers"] if c["name"] == names.CONTAINER_VLLM)


def test_level1_memory_includes_pinned_weights() -> None:
    pod = builders.model_pod(
        OWNER, spec(resources={"gpuMemoryUtilization": 0.5, "weightsSize": "16Gi", "memory": "8Gi"}), 0, agent_image=AGENT
    )  # fmt: skip
    res = _vllm(pod)["resources"]
    assert res["requests"]["memory"] == res["limits"]["memory"] == "24Gi"
    level2 = builders.model_pod(
        OWNER,
        spec(sleep={"level": 2}, resources={"gpuMemoryUtilization": 0.5, "weightsSize": "16Gi", "memory": "8Gi"}),
        0,
        agent_image=AGENT,
    )  # fmt: skip
    assert _vllm(level2)["resources"]["limits"]["memory"] == "8Gi"


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


@pytest.mark.parametrize(
    ("resources", "util", "kv"),
    [
        ({"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"}, "0.45", None),
        (
            {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi", "kvCacheSize": "20Gi"},
            "0.45",
            str(20 * 2**30),
        ),
        ({"gpuMemoryUtilization": 1, "kvCacheSize": "1.5Gi"}, "1", str(3 * 2**29)),
    ],
)
def test_every_pod_carries_an_explicit_memory_share(
    resources: dict[str, Any], util: str, kv: str | None
) -> None:
    """Never the version's default: on 0.34 an unset share is all free memory. The utilization
    is passed even with a fixed KV size, because vLLM's startup check still compares with it."""
    level = {"level": 1} if "weightsSize" in resources else {"level": 2}
    c = _vllm(
        builders.model_pod(OWNER, spec(resources=resources, sleep=level), 0, agent_image=AGENT)
    )
    argv = c["args"]
    assert _flag(argv, "--gpu-memory-utilization") == util
    assert _flag(argv, "--kv-cache-memory-bytes") == kv
    assert argv.count("--gpu-memory-utilization") == 1


@pytest.mark.parametrize(
    "arg",
    [
        "--kv-cache-memory-bytes=8Gi",
        "--kv_cache_memory_bytes",
        "--kv-cache-memory",
        "--gpu-memory-utilization=0.9",
    ],
)
def test_user_args_cannot_set_the_memory_share(arg: str) -> None:
    """The CRD refuses them (CEL `matches` is RE2; this pattern means the same in Python)."""
    from vllm_sleep.api.model_deployment import _OWNED_FLAG_RE

    assert re.match(_OWNED_FLAG_RE, arg)
    assert not re.match(_OWNED_FLAG_RE, "--kv-cache-dtype=fp8")


def test_vllm_is_bound_to_loopback_with_sleep_mode() -> None:
    c = _vllm(builders.model_pod(OWNER, spec(), 0, agent_image=AGENT))
    argv = [*c["command"], *c["args"]]
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-8B-Instruct"]
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == str(names.VLLM_PORT)
    assert "--enable-sleep-mode" in argv
    assert {"name": "VLLM_SERVER_DEV_MODE", "value": "1"} in c["env"]
    assert {"name": "VLLM_SIM_WEIGHTS_BYTES", "value": str(16 * 2**30)} in c["env"]


def test_operator_labels_win_over_pod_labels() -> None:
    pod = builders.model_pod(OWNER, spec(**FULL), 0, agent_image=AGENT)
    assert pod["metadata"]["labels"][names.LABEL_MODEL] == "llama-8b"
    assert pod["metadata"]["labels"]["team"] == "a"


def test_spec_hash_tracks_the_pod_shape_only() -> None:
    def h(**over: Any) -> str:
        pod = builders.model_pod(OWNER, spec(**over), 0, agent_image=AGENT)
        return str(pod["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH])

    base = h()
    assert base == h()  # deterministic
    assert base == h(replicas=3, sleep={"idleTimeout": "1h"}, placement={"priority": 9})
    assert base != h(image="vllm/vllm-openai:v0.34.0")
    assert base != h(sleep={"level": 2})
    assert base != h(args=["--max-model-len=4096"])


def test_spec_hash_ignores_its_own_annotation() -> None:
    pod = builders.model_pod(OWNER, spec(), 0, agent_image=AGENT)
    assert builders.spec_hash(pod) == pod["metadata"]["annotations"][names.ANNOTATION_SPEC_HASH]


def test_dra_pool_needs_a_claim() -> None:
    with pytest.raises(ValueError, match="ResourceClaim"):
        builders.model_pod(
            OWNER, spec(), 0, agent_image=AGENT, gpu=GpuAttachment(GPUPoolSpec.model_validate(POOL))
        )


def test_owner_from_body_and_reference() -> None:
    body = {
        "apiVersion": "vllm-sleep.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
    }
    owner = builders.owner_from_body(body)
    ref = builders.owner_reference(owner)
    assert ref["controller"] is True and ref["uid"] == "u" and ref["kind"] == "ModelDeployment"
    for manifest in (
        builders.model_pod(owner, spec(), 0, agent_image=AGENT),
        builders.model_service(owner, spec()),
        builders.control_token_secret(owner, "x"),
        builders.demand_lease(owner),
    ):
        assert manifest["metadata"]["ownerReferences"] == [ref]
        assert manifest["metadata"]["namespace"] == "ns"


def test_names_follow_names_py() -> None:
    assert builders.demand_lease(OWNER)["metadata"]["name"] == "llama-8b-demand"
    assert builders.control_token_secret(OWNER, "x")["metadata"]["name"] == "llama-8b-control-token"
    assert (
        builders.model_pod(OWNER, spec(), 2, agent_image=AGENT)["metadata"]["name"] == "llama-8b-2"
    )
    with pytest.raises(ValueError):
        builders.control_token_secret(OWNER, "")


def _agent(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["spec"]["initContainers"] if c["name"] == names.CONTAINER_AGENT)


def _mounts(container: dict[str, Any], pod: dict[str, Any]) -> dict[str, str]:
    """mountPath -> emptyDir volume name, for the container's emptyDir mounts."""
    empty = {v["name"] for v in pod["spec"]["volumes"] if "emptyDir" in v}
    return {
        m["mountPath"]: m["name"] for m in container.get("volumeMounts", []) if m["name"] in empty
    }


def _under(path: str, mounts: dict[str, str]) -> str | None:
    return next((v for d, v in mounts.items() if path.startswith(d.rstrip("/") + "/")), None)


def test_vllm_logs_into_a_volume_the_agent_reads() -> None:
    pod = builders.model_pod(OWNER, spec(), 0, agent_image=AGENT)
    vllm, agent = _vllm(pod), _agent(pod)
    env = {e["name"]: e.get("value") for e in vllm["env"]}
    config = env[names.ENV_VLLM_LOGGING_CONFIG]
    assert config is not None
    # The agent writes the file vLLM reads, and reads the file that configuration names: the
    # same volume at the same path in both containers (the configuration holds the path).
    assert _flag(agent["args"], "--vllm-logging-config") == config
    log_file = _flag(agent["args"], "--vllm-log-file")
    assert log_file is not None
    vllm_mounts, agent_mounts = _mounts(vllm, pod), _mounts(agent, pod)
    assert _under(config, vllm_mounts) == _under(config, agent_mounts) is not None
    assert _under(log_file, vllm_mounts) == _under(log_file, agent_mounts) is not None
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == _under(config, vllm_mounts))
    assert volume["emptyDir"]["sizeLimit"]  # bounded: the pod is evicted past it
    # A sidecar: it starts, and writes the configuration, before vLLM starts.
    assert agent["restartPolicy"] == "Always"


@pytest.mark.parametrize(
    ("pool", "util"),
    [
        (None, "0.9"),  # whole devices: vLLM's pre-0.34 default, never 0.34's all-free-memory
        ({}, "0.92"),  # the pool's defaults: (80 - 3 x 2Gi) / 80 = 0.925, rounded down
        ({"slotsPerDevice": 2, "sleepResidual": "4Gi"}, "0.95"),
        ({"slotsPerDevice": 1}, "1"),
    ],
)
def test_a_spec_without_a_share_still_gets_an_explicit_one(
    pool: dict[str, Any] | None, util: str
) -> None:
    gpu = None
    if pool is not None:
        pool_spec = GPUPoolSpec.model_validate({**POOL, "sharing": "TimeSlicing", **pool})
        gpu = GpuAttachment(pool_spec)
    pod = builders.model_pod(
        OWNER, spec(resources={"weightsSize": "16Gi"}), 0, agent_image=AGENT, gpu=gpu
    )
    argv = _vllm(pod)["args"]
    assert _flag(argv, "--gpu-memory-utilization") == util
    assert argv.count("--gpu-memory-utilization") == 1
    if pool is not None:  # the agent's share is the pool's count of the same share
        engine = int(_flag(_agent(pod)["args"], "--engine-memory-bytes") or 0)
        assert engine == int(float(util) * 80 * 2**30)


def test_a_users_own_logging_config_replaces_the_operators() -> None:
    own = {"name": names.ENV_VLLM_LOGGING_CONFIG, "value": "/etc/vllm/log.json"}
    env = _vllm(builders.model_pod(OWNER, spec(env=[own]), 0, agent_image=AGENT))["env"]
    assert [e for e in env if e["name"] == names.ENV_VLLM_LOGGING_CONFIG] == [own]


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        ({"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"}, str(int(0.45 * 80 * 2**30))),
        # A sized KV cache maps less than the share: share - freed would overstate the residual.
        ({"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi", "kvCacheSize": "20Gi"}, None),
    ],
)
def test_the_agent_knows_the_engines_share_in_a_pool(
    resources: dict[str, Any], expected: str | None
) -> None:
    pool = GPUPoolSpec.model_validate({**POOL, "sharing": "TimeSlicing"})
    pod = builders.model_pod(
        OWNER, spec(resources=resources), 0, agent_image=AGENT, gpu=GpuAttachment(pool)
    )
    args = _agent(pod)["args"]
    assert (_flag(args, "--engine-memory-bytes") if expected else None) == expected
    assert expected is not None or "--engine-memory-bytes" not in args


def test_without_a_pool_the_engines_share_is_unknown() -> None:
    pod = builders.model_pod(OWNER, spec(), 0, agent_image=AGENT)
    assert "--engine-memory-bytes" not in _agent(pod)["args"]
    assert "--vllm-log-file" in _agent(pod)["args"]  # freed bytes are still reported
