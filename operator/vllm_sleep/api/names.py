"""Names shared by every component: API group, labels, annotations, conditions, ports.

One place, so the operator, the agent, the gateway and the sim-kubelet cannot drift apart.
"""

from __future__ import annotations

from typing import Final

GROUP: Final = "vllm-sleep.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

MODEL_DEPLOYMENT_KIND: Final = "ModelDeployment"
MODEL_DEPLOYMENT_PLURAL: Final = "modeldeployments"
GPU_POOL_KIND: Final = "GPUPool"
GPU_POOL_PLURAL: Final = "gpupools"

# Labels on everything the operator creates.
LABEL_MODEL: Final = f"{GROUP}/model"  # ModelDeployment name
LABEL_SERVED_MODEL: Final = f"{GROUP}/served-model"  # value of "model" clients send (sanitised)
LABEL_REPLICA: Final = f"{GROUP}/replica"  # replica index, "0".."n-1"
LABEL_COMPONENT: Final = f"{GROUP}/component"  # "model-server" | "demand-lease" | ...
LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "vllm-sleep-operator"

# Annotations.
ANNOTATION_SERVED_MODEL: Final = (
    f"{GROUP}/served-model-name"  # exact served name (labels are limited)
)
ANNOTATION_SPEC_HASH: Final = (
    f"{GROUP}/spec-hash"  # hash of the pod-shaping spec; change => replace
)
# On a ModelDeployment: MicroTime of a `vllm-sleep sleep NAME` (body built by api.demand).
ANNOTATION_SLEEP_REQUEST: Final = f"{GROUP}/sleep-request"
# On a pooled model pod: the GPU the scheduler placed it on, "<node>/<device>" (the sim-kubelet
# maps a time-sliced pod to that device; DRA pods also reference the device's claim).
ANNOTATION_DEVICE: Final = f"{GROUP}/device"
# On a pooled model pod: the device bytes its engine takes awake (its share) as the pod was
# built. A pod of an older spec (being replaced) holds its own share, not the spec's current one.
ANNOTATION_DEVICE_BYTES: Final = f"{GROUP}/device-bytes"

# Pod condition used as readiness gate: True only while the engine is awake and admitting.
CONDITION_AWAKE: Final = f"{GROUP}/awake"


# Ports inside every model pod. vLLM binds 127.0.0.1:VLLM_PORT, so only the agent is reachable.
PUBLIC_PORT: Final = 8000  # agent: OpenAI allowlist
VLLM_PORT: Final = 8001  # vLLM itself, loopback only
CONTROL_PORT: Final = 8002  # agent: authenticated sleep/wake/state for the operator

CONTAINER_VLLM: Final = "vllm"
CONTAINER_AGENT: Final = "agent"

# The agent's control token: a key of the per-model Secret, mounted as a file in model pods
# (the environment variable serves an agent run by hand).
ENV_CONTROL_TOKEN: Final = "VLLM_SLEEP_CONTROL_TOKEN"
SECRET_TOKEN_KEY: Final = "token"


def token_secret_name(model_deployment: str) -> str:
    return f"{model_deployment}-control-token"


def pod_name(model_deployment: str, replica: int) -> str:
    return f"{model_deployment}-{replica}"


# Values of LABEL_COMPONENT on the objects the operator creates.
COMPONENT_MODEL_SERVER: Final = "model-server"
COMPONENT_SERVICE: Final = "service"
COMPONENT_CONTROL_TOKEN: Final = "control-token"
COMPONENT_DEMAND_LEASE: Final = "demand-lease"

# Environment of the vLLM container that the operator owns (users may not set them).
ENV_VLLM_DEV_MODE: Final = "VLLM_SERVER_DEV_MODE"  # enables /sleep, /wake_up, /is_sleeping
# vLLM's store of responses: with it, `"background": true` responses generate on after their
# answer, where the agent cannot count them, so a sleep would meet them running (docs/agent.md).
ENV_VLLM_RESPONSES_STORE: Final = "VLLM_ENABLE_RESPONSES_API_STORE"
ENV_SIM_WEIGHTS_BYTES: Final = "VLLM_SIM_WEIGHTS_BYTES"  # simulator only; real vLLM ignores it
# vLLM's logging dictConfig, written by the agent (docs/agent.md "Residual memory"). Not
# reserved: a user's own value replaces it, and the residual is then not measured.
ENV_VLLM_LOGGING_CONFIG: Final = "VLLM_LOGGING_CONFIG_PATH"

SHORT_NAME_MODEL_DEPLOYMENT: Final = "mdep"
SHORT_NAME_GPU_POOL: Final = "gpool"
CATEGORY: Final = "vllm-sleep"
