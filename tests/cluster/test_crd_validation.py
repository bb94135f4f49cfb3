"""The generated CRDs on a real apiserver: bad objects fail at apply time, naming the field.

Data-driven: each case is a patch on a good ModelDeployment (None deletes a key) and a
substring the apiserver's message must contain (the field path, and the reason where it is ours).
Objects are created with dryRun=All, so nothing is stored and the cases are independent.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from vllm_sleep.api import names

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]

GOOD: dict[str, Any] = {
    "apiVersion": names.API_VERSION,
    "kind": names.MODEL_DEPLOYMENT_KIND,
    "metadata": {"name": "llama-8b"},
    "spec": {
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "image": "vllm/vllm-openai:v0.33.0",
        "resources": {"gpuMemoryUtilization": 0.45, "weightsSize": "16Gi"},
    },
}
GOOD_POOL: dict[str, Any] = {
    "apiVersion": names.API_VERSION,
    "kind": names.GPU_POOL_KIND,
    "metadata": {"name": "h100-shared"},
    "spec": {"deviceMemory": "80Gi"},
}

# (id, patch on the object, substring of the apiserver's message)
BAD_MODELS: list[tuple[str, dict[str, Any], str]] = [
    # -- types and required fields
    ("no-spec", {"spec": None}, "spec: Required value"),
    ("no-model", {"spec": {"model": None}}, "spec.model: Required value"),
    ("empty-model", {"spec": {"model": ""}}, "spec.model"),
    ("no-image", {"spec": {"image": None}}, "spec.image: Required value"),
    # resources defaults to {}: then the default sleep level 1 misses its weightsSize
    ("no-resources", {"spec": {"resources": None}}, "sleep level 1 needs resources.weightsSize"),
    ("model-not-string", {"spec": {"model": 7}}, "spec.model"),
    ("replicas-string", {"spec": {"replicas": "two"}}, "spec.replicas"),
    ("replicas-float", {"spec": {"replicas": 1.5}}, "spec.replicas"),
    ("args-not-list", {"spec": {"args": "--max-model-len=8192"}}, "spec.args"),
    ("env-not-list", {"spec": {"env": {"A": "1"}}}, "spec.env"),
    ("sleep-not-object", {"spec": {"sleep": "level1"}}, "spec.sleep"),
    ("unknown-field", {"spec": {"replicaz": 2}}, 'unknown field "spec.replicaz"'),
    ("unknown-nested-field", {"spec": {"sleep": {"lvl": 2}}}, 'unknown field "spec.sleep.lvl"'),
    # -- ranges
    ("replicas-negative", {"spec": {"replicas": -1}}, "spec.replicas"),
    ("replicas-too-many", {"spec": {"replicas": 1000}}, "spec.replicas"),
    ("util-zero", {"spec": {"resources": {"gpuMemoryUtilization": 0}}}, "spec.resources.gpuMemoryUtilization"),
    ("util-above-one", {"spec": {"resources": {"gpuMemoryUtilization": 1.01}}}, "spec.resources.gpuMemoryUtilization"),
    ("util-negative", {"spec": {"resources": {"gpuMemoryUtilization": -0.5}}}, "spec.resources.gpuMemoryUtilization"),
    ("util-string", {"spec": {"resources": {"gpuMemoryUtilization": "45%"}}}, "spec.resources.gpuMemoryUtilization"),
    ("gpus-zero", {"spec": {"resources": {"gpus": 0}}}, "spec.resources.gpus"),
    ("max-queued-negative", {"spec": {"wake": {"maxQueued": -1}}}, "spec.wake.maxQueued"),
    ("priority-huge", {"spec": {"placement": {"priority": 10**9}}}, "spec.placement.priority"),
    # -- enums
    ("level-3", {"spec": {"sleep": {"level": 3}}}, "spec.sleep.level"),
    ("level-negative", {"spec": {"sleep": {"level": -1}}}, "spec.sleep.level"),
    ("level-string", {"spec": {"sleep": {"level": "1"}}}, "spec.sleep.level"),
    ("policy-unknown", {"spec": {"sleep": {"policy": "Sometimes"}}}, "spec.sleep.policy"),
    ("policy-lowercase", {"spec": {"sleep": {"policy": "auto"}}}, "spec.sleep.policy"),
    ("pull-policy-unknown", {"spec": {"imagePullPolicy": "Sometimes"}}, "spec.imagePullPolicy"),
    ("toleration-effect", {"spec": {"tolerations": [{"key": "k", "effect": "Evict"}]}}, "spec.tolerations[0].effect"),
    # -- durations
    ("idle-negative", {"spec": {"sleep": {"idleTimeout": "-5m"}}}, "spec.sleep.idleTimeout"),
    ("idle-no-unit", {"spec": {"sleep": {"idleTimeout": "600"}}}, "spec.sleep.idleTimeout"),
    ("idle-integer", {"spec": {"sleep": {"idleTimeout": 600}}}, "spec.sleep.idleTimeout"),
    ("idle-days", {"spec": {"sleep": {"idleTimeout": "1d"}}}, "spec.sleep.idleTimeout"),
    ("idle-iso", {"spec": {"sleep": {"idleTimeout": "PT10M"}}}, "spec.sleep.idleTimeout"),
    ("idle-too-short", {"spec": {"sleep": {"idleTimeout": "500ms"}}}, "must be at least 1s"),
    ("idle-zero", {"spec": {"sleep": {"idleTimeout": "0s"}}}, "spec.sleep.idleTimeout"),
    ("drain-garbage", {"spec": {"sleep": {"drainTimeout": "soon"}}}, "spec.sleep.drainTimeout"),
    ("wake-timeout-zero", {"spec": {"wake": {"timeout": "0s"}}}, "spec.wake.timeout"),
    ("wake-timeout-space", {"spec": {"wake": {"timeout": "2 m"}}}, "spec.wake.timeout"),
    ("min-awake-negative", {"spec": {"placement": {"minAwake": "-30s"}}}, "spec.placement.minAwake"),
    # -- quantities
    ("weights-bad-unit", {"spec": {"resources": {"weightsSize": "16GB"}}}, "spec.resources.weightsSize"),
    ("weights-lowercase", {"spec": {"resources": {"weightsSize": "16gi"}}}, "spec.resources.weightsSize"),
    ("weights-negative", {"spec": {"resources": {"weightsSize": "-16Gi"}}}, "spec.resources.weightsSize"),
    ("weights-negative-int", {"spec": {"resources": {"weightsSize": -5}}}, "spec.resources.weightsSize"),
    ("weights-zero", {"spec": {"resources": {"weightsSize": "0"}}}, "must be greater than zero"),
    ("weights-float", {"spec": {"resources": {"weightsSize": 1.5}}}, "spec.resources.weightsSize"),
    ("memory-garbage", {"spec": {"resources": {"memory": "lots"}}}, "spec.resources.memory"),
    ("cpu-garbage", {"spec": {"resources": {"cpu": "4 cores"}}}, "spec.resources.cpu"),
    # -- formats
    ("served-name-space", {"spec": {"servedModelName": "my model"}}, "spec.servedModelName"),
    ("served-name-leading-dash", {"spec": {"servedModelName": "-llama"}}, "spec.servedModelName"),
    ("pool-uppercase", {"spec": {"placement": {"pool": "H100"}}}, "spec.placement.pool"),
    ("sa-bad", {"spec": {"serviceAccountName": "My_SA"}}, "spec.serviceAccountName"),
    ("env-bad-name", {"spec": {"env": [{"name": "A=B", "value": "1"}]}}, "spec.env[0].name"),
    ("env-duplicate", {"spec": {"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}}, "spec.env[1]"),
    ("name-too-long", {"metadata": {"name": "m" * 57}}, "metadata.name must start with a letter"),
    ("name-starts-with-digit", {"metadata": {"name": "8b-llama"}}, "metadata.name must start with a letter"),
    # -- cross-field rules (CEL)
    ("level1-without-weights", {"spec": {"resources": {"weightsSize": None}}}, "spec.resources.weightsSize: Required value: sleep level 1 needs resources.weightsSize"),
    ("always-awake-zero-replicas", {"spec": {"replicas": 0, "sleep": {"policy": "AlwaysAwake"}}}, "sleep.policy AlwaysAwake needs replicas >= 1"),
    ("asleep-zero-replicas", {"spec": {"replicas": 0, "sleep": {"policy": "Asleep"}}}, "sleep.policy Asleep needs replicas >= 1"),
    ("args-host", {"spec": {"args": ["--host", "0.0.0.0"]}}, "args must not set --host"),
    ("args-port-equals", {"spec": {"args": ["--port=9000"]}}, "args must not set --port=9000"),
    ("args-sleep-mode", {"spec": {"args": ["--max-model-len=8192", "--enable-sleep-mode"]}}, "args must not set --enable-sleep-mode"),
    ("args-served-name-underscore", {"spec": {"args": ["--served_model_name=x"]}}, "args must not set --served_model_name=x"),
    ("args-util", {"spec": {"args": ["--gpu-memory-utilization", "0.9"]}}, "args must not set --gpu-memory-utilization"),
    ("args-kv-size", {"spec": {"args": ["--kv_cache_memory_bytes=8Gi"]}}, "args must not set --kv_cache_memory_bytes=8Gi"),
    ("args-tp-short", {"spec": {"args": ["-tp", "2"]}}, "args must not set -tp"),
    ("env-dev-mode", {"spec": {"env": [{"name": "VLLM_SERVER_DEV_MODE", "value": "0"}]}}, "env must not set VLLM_SERVER_DEV_MODE"),
    ("env-responses-store", {"spec": {"env": [{"name": "VLLM_ENABLE_RESPONSES_API_STORE", "value": "1"}]}}, "env must not set VLLM_ENABLE_RESPONSES_API_STORE: background responses"),
    ("toleration-exists-with-value", {"spec": {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}}, "operator Exists must not set a value"),
    ("toleration-seconds-no-execute", {"spec": {"tolerations": [{"key": "k", "tolerationSeconds": 5}]}}, "tolerationSeconds needs effect NoExecute"),
]  # fmt: skip

BAD_POOLS: list[tuple[str, dict[str, Any], str]] = [
    ("no-device-memory", {"spec": {"deviceMemory": None}}, "spec.deviceMemory: Required value"),
    ("device-memory-bad", {"spec": {"deviceMemory": "80 GB"}}, "spec.deviceMemory"),
    ("sharing-unknown", {"spec": {"sharing": "MIG"}}, "spec.sharing"),
    ("exclusive-with-slots", {"spec": {"sharing": "Exclusive", "slotsPerDevice": 4}}, "sharing Exclusive allows one model per device"),
    ("slots-zero", {"spec": {"slotsPerDevice": 0}}, "spec.slotsPerDevice"),
]  # fmt: skip

GOOD_MODELS: list[tuple[str, dict[str, Any]]] = [
    ("minimal", {}),
    ("level2-without-weights", {"spec": {"sleep": {"level": 2}, "resources": {"weightsSize": None}}}),
    # no memory share: the operator derives one (reconcile/share.py)
    ("no-utilization", {"spec": {"resources": {"gpuMemoryUtilization": None}}}),
    ("no-resources-level2", {"spec": {"sleep": {"level": 2}, "resources": None}}),
    ("level0-kv-only", {"spec": {"sleep": {"level": 0}, "resources": {"weightsSize": None}}}),
    ("integer-quantity", {"spec": {"resources": {"weightsSize": 17179869184, "cpu": 4}}}),
    ("compound-durations", {"spec": {"sleep": {"idleTimeout": "1h30m", "drainTimeout": "1m30s"}, "placement": {"minAwake": "2m", "pool": "h100-shared"}}}),
    ("zero-replicas-auto", {"spec": {"replicas": 0}}),
    ("allowed-args", {"spec": {"args": ["--max-model-len=8192", "--hostname-is-not-host", "--port-range=1"]}}),
    ("hf-served-name", {"spec": {"servedModelName": "meta-llama/Llama-3.1-8B-Instruct:fp8"}}),
]  # fmt: skip


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def crds(kube: Any) -> None:
    kube.apply_crds(ROOT / "crds")


@pytest.fixture
def objects(kube: Any, crds: None) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube.api_client)


def create(api: client.CustomObjectsApi, obj: dict[str, Any], namespace: str | None) -> Any:
    kwargs = {"dry_run": "All", "field_validation": "Strict"}
    if namespace is None:
        return api.create_cluster_custom_object(
            names.GROUP, names.VERSION, names.GPU_POOL_PLURAL, obj, **kwargs
        )
    return api.create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.MODEL_DEPLOYMENT_PLURAL, obj, **kwargs
    )


def rejection(api: client.CustomObjectsApi, obj: dict[str, Any], namespace: str | None) -> str:
    with pytest.raises(client.ApiException) as err:
        create(api, obj, namespace)
    assert err.value.status in (400, 422), err.value.body
    return str(json.loads(err.value.body).get("message", err.value.body))


@pytest.mark.parametrize(
    ("patch", "needle"), [c[1:] for c in BAD_MODELS], ids=[c[0] for c in BAD_MODELS]
)
def test_bad_model_is_rejected_naming_the_field(
    objects: client.CustomObjectsApi, namespace: str, patch: dict[str, Any], needle: str
) -> None:
    message = rejection(objects, merged(GOOD, patch), namespace)
    assert needle in message, message


@pytest.mark.parametrize(
    ("patch", "needle"), [c[1:] for c in BAD_POOLS], ids=[c[0] for c in BAD_POOLS]
)
def test_bad_pool_is_rejected_naming_the_field(
    objects: client.CustomObjectsApi, patch: dict[str, Any], needle: str
) -> None:
    message = rejection(objects, merged(GOOD_POOL, patch), None)
    assert needle in message, message


@pytest.mark.parametrize(
    "patch",
    [
        {"spec": {"sleep": {"idleTimeout": "5 minutes"}}},
        {"spec": {"sleep": {"idleTimeout": "-5m"}}},
        {"spec": {"wake": {"timeout": "2 m"}}},
    ],
    ids=["idle-words", "idle-negative", "wake-timeout-space"],
)
def test_a_malformed_duration_gets_only_the_format_error(
    objects: client.CustomObjectsApi, namespace: str, patch: dict[str, Any]
) -> None:
    """The field's CEL bound is checked only on a well-formed duration: the apiserver runs the
    rules even when the pattern failed, and `duration()` of a malformed string added a second,
    baffling error ("type conversion error from 'string' to 'google.protobuf.Duration')."""
    message = rejection(objects, merged(GOOD, patch), namespace)
    assert "should match" in message, message
    assert "type conversion error" not in message, message


@pytest.mark.parametrize("patch", [c[1] for c in GOOD_MODELS], ids=[c[0] for c in GOOD_MODELS])
def test_good_model_is_accepted(
    objects: client.CustomObjectsApi, namespace: str, patch: dict[str, Any]
) -> None:
    create(objects, merged(GOOD, patch), namespace)


def test_defaults_are_applied(objects: client.CustomObjectsApi, namespace: str) -> None:
    spec = create(objects, GOOD, namespace)["spec"]
    assert spec["replicas"] == 1
    assert spec["sleep"] == {
        "level": 1,
        "idleTimeout": "10m",
        "policy": "Auto",
        "drainTimeout": "2m",
    }
    assert spec["wake"] == {"onRequest": True, "timeout": "2m", "maxQueued": 256}
    assert spec["placement"] == {"priority": 0, "minAwake": "0s"}
    assert spec["resources"]["gpus"] == 1
    pool = create(objects, GOOD_POOL, None)["spec"]
    assert pool["sharing"] == "DRA" and pool["slotsPerDevice"] == 4
    assert pool["deviceClassName"] == "gpu.nvidia.com" and pool["sleepResidual"] == "2Gi"


def test_the_apiserver_and_the_models_agree_on_defaults(
    objects: client.CustomObjectsApi, namespace: str
) -> None:
    from vllm_sleep.api import ModelDeploymentSpec

    served = create(objects, GOOD, namespace)["spec"]
    assert ModelDeploymentSpec.model_validate(GOOD["spec"]).to_wire() == {
        "args": [],
        "env": [],
        "tolerations": [],
        "imagePullSecrets": [],
        **served,
    }


def test_printer_columns(kube: Any, crds: None, namespace: str) -> None:
    obj = merged(
        GOOD, {"metadata": {"name": "cols"}, "spec": {"placement": {"pool": "h100-shared"}}}
    )
    kube.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(obj))
    out = kube.kubectl("get", "mdep", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "STATE", "READY", "AWAKE", "POOL", "LAST-ACTIVITY", "AGE"]
    assert out[1].split()[:2] == ["cols", "h100-shared"]  # no status yet: empty STATE/AWAKE
    wide = kube.kubectl("get", "modeldeployments.vllm-sleep.io", "-n", namespace, "-o", "wide")
    assert "MODEL" in wide.stdout.splitlines()[0]
    assert kube.kubectl("get", "vllm-sleep", "-n", namespace).returncode == 0  # the category
    pool = merged(GOOD_POOL, {"metadata": {"name": f"{namespace}-pool"}})  # cluster-scoped
    kube.kubectl("apply", "-f", "-", input=json.dumps(pool))
    try:
        header = kube.kubectl("get", "gpool", pool["metadata"]["name"]).stdout.splitlines()[0]
        assert header.split() == [
            "NAME",
            "SHARING",
            "DEVICE-MEMORY",
            "NODES",
            "DEVICES",
            "MODELS",
            "AWAKE",
            "COMMITTED%",
            "AGE",
        ]
    finally:
        kube.kubectl("delete", "gpool", pool["metadata"]["name"], "--wait=false", check=False)


def test_status_is_a_subresource(
    objects: client.CustomObjectsApi, kube: Any, namespace: str
) -> None:
    obj = merged(GOOD, {"metadata": {"name": "st"}, "status": {"phase": "Awake"}})
    created = objects.create_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.MODEL_DEPLOYMENT_PLURAL, obj
    )
    assert "status" not in created  # status in a create is dropped
    patched = objects.patch_namespaced_custom_object_status(
        names.GROUP,
        names.VERSION,
        namespace,
        names.MODEL_DEPLOYMENT_PLURAL,
        "st",
        {"status": {"phase": "Asleep", "awake": "0/1", "replicas": [{"pod": "st-0", "node": None, "state": "Asleep"}]}},
    )  # fmt: skip
    assert patched["status"]["phase"] == "Asleep"
    with pytest.raises(client.ApiException) as err:
        objects.patch_namespaced_custom_object_status(
            names.GROUP, names.VERSION, namespace, names.MODEL_DEPLOYMENT_PLURAL, "st",
            {"status": {"phase": "Sleepy"}},
        )  # fmt: skip
    assert "status.phase" in err.value.body
