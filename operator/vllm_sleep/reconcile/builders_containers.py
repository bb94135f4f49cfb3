"""The two containers of a model pod: vLLM (loopback only) and the agent sidecar."""

from __future__ import annotations

from typing import Any

from ..api import names
from ..api.gpu_pool import GPUPoolSpec
from ..api.model_deployment import ModelDeploymentSpec
from .builders_owner import Owner
from .share import effective_utilization

VLLM_HOST = "127.0.0.1"  # unreachable from outside the pod: the dev endpoints stay private
HEALTH_PATH = "/health"  # the agent's public /health reflects vLLM's (200 while asleep)
AGENT_HEALTH_PATH = "/healthz"  # the agent process itself, on the control port

# The volume vLLM and the agent share for vLLM's log, mounted at the same path in both (the
# logging configuration names the file by its path). The agent writes the configuration there
# before vLLM starts and reads the sleep report from the log (docs/agent.md, "Residual
# memory"). Each of vLLM's processes rotates its own handler at 1 MiB: a TP8 engine has ten.
LOG_VOLUME = "vllm-log"
LOG_DIR = "/var/run/vllm-sleep"
LOGGING_CONFIG_FILE = f"{LOG_DIR}/logging.json"
LOG_FILE = f"{LOG_DIR}/vllm.log"
LOG_VOLUME_SIZE = "32Mi"


def log_volume() -> dict[str, Any]:
    # In memory: never disk pressure for a few MiB; counted in the writer's memory.
    return {"name": LOG_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": LOG_VOLUME_SIZE}}


def _log_mount() -> dict[str, Any]:
    return {"name": LOG_VOLUME, "mountPath": LOG_DIR}


# The control token reaches the agent as a file of the mounted Secret, not an environment
# variable: kubelet updates the file when the Secret changes and the agent re-reads it, so a
# token is rotated by replacing the Secret's value, without restarting any pod (docs/security.md).
TOKEN_VOLUME = "control-token"
TOKEN_DIR = "/var/run/secrets/vllm-sleep.io"
TOKEN_FILE = f"{TOKEN_DIR}/{names.SECRET_TOKEN_KEY}"


def token_volume(owner: Owner) -> dict[str, Any]:
    secret = {
        "secretName": names.token_secret_name(owner.name),
        "items": [{"key": names.SECRET_TOKEN_KEY, "path": names.SECRET_TOKEN_KEY}],
    }
    return {"name": TOKEN_VOLUME, "secret": secret}


def _token_mount() -> dict[str, Any]:
    return {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}


def _http_probe(
    path: str, port: int | str, period: int, failures: int, timeout: int
) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def memory_share_args(spec: ModelDeploymentSpec, pool: GPUPoolSpec | None = None) -> list[str]:
    """The engine's explicit memory share, never the version's default.

    `--gpu-memory-utilization` always: vLLM's startup check compares free device memory with it
    even when the KV size is fixed, and on 0.34 an unset share means "all free memory" (the
    extensible KV cache), which leaves no room for sleeping neighbours to wake. With
    `resources.kvCacheSize`, `--kv-cache-memory-bytes` too: a fixed KV size, so a wake re-maps
    a known amount, and on 0.34 the extensible KV cache stays off. An unset
    `resources.gpuMemoryUtilization` is derived from the pool (`share.effective_utilization`).
    """
    res = spec.resources
    args = ["--gpu-memory-utilization", f"{effective_utilization(spec, pool):g}"]
    if res.kv_cache_size is not None:
        args += ["--kv-cache-memory-bytes", str(res.kv_cache_size.bytes())]
    return args


def vllm_container(
    spec: ModelDeploymentSpec,
    served: str,
    memory: tuple[str | None, str | None],
    gpu_limits: dict[str, str],
    pool: GPUPoolSpec | None = None,
) -> dict[str, Any]:
    res = spec.resources
    args = [
        spec.model,
        "--host",
        VLLM_HOST,
        "--port",
        str(names.VLLM_PORT),
        "--enable-sleep-mode",
        "--served-model-name",
        served,
        *memory_share_args(spec, pool),
    ]
    if res.gpus > 1:
        args += ["--tensor-parallel-size", str(res.gpus)]
    env = [{"name": names.ENV_VLLM_DEV_MODE, "value": "1"}]
    if res.weights_size is not None:
        # Read only by the simulator (a real vLLM ignores it), so the same ModelDeployment
        # behaves like the real model's size on the project image.
        env.append({"name": names.ENV_SIM_WEIGHTS_BYTES, "value": str(res.weights_size.bytes())})
    user_env = [e.to_wire() for e in spec.env]
    if not any(e["name"] == names.ENV_VLLM_LOGGING_CONFIG for e in user_env):
        env.append({"name": names.ENV_VLLM_LOGGING_CONFIG, "value": LOGGING_CONFIG_FILE})
    env += user_env
    requests: dict[str, str] = {}
    limits: dict[str, str] = dict(gpu_limits)
    if res.cpu is not None:
        requests["cpu"] = str(res.cpu)  # no CPU limit: throttling stalls tokenisation and streams
    mem_request, mem_limit = memory
    if mem_request is not None:
        requests["memory"] = mem_request
    if mem_limit is not None:
        limits["memory"] = mem_limit
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    container: dict[str, Any] = {
        "name": names.CONTAINER_VLLM,
        "image": spec.image,
        # Explicit so that any image with a `vllm` entry point works, whatever its ENTRYPOINT.
        "command": ["vllm", "serve"],
        "args": [*args, *spec.args],
        "env": env,
        "resources": resources,
        "volumeMounts": [_log_mount()],
        # Probes dial the pod IP, where vLLM does not listen: they go through the agent's public
        # port. They sit on this container, not the agent's: a sidecar's startup probe must pass
        # before the main containers start, and vLLM's health cannot pass before vLLM runs.
        "startupProbe": _http_probe(HEALTH_PATH, names.PUBLIC_PORT, 10, 360, 5),  # 1h to load
        "readinessProbe": _http_probe(HEALTH_PATH, names.PUBLIC_PORT, 10, 3, 5),
        "livenessProbe": _http_probe(HEALTH_PATH, names.PUBLIC_PORT, 15, 8, 10),
        # When vLLM dies (out of memory at startup, a bad flag), the tail of its log becomes the
        # container's termination message, which the operator shows in status and Events.
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    return container


def agent_container(
    owner: Owner, spec: ModelDeploymentSpec, agent_image: str, engine_memory: int | None = None
) -> dict[str, Any]:
    """The agent as a native sidecar: starts before vLLM, runs for the pod's whole life.

    `engine_memory`: the engine's awake device bytes (its share), known when the model is in a
    GPUPool; the agent then turns what a sleep freed into the engine's residual. Without it
    only the freed bytes are reported.
    """
    wake = spec.wake
    residual = ["--vllm-logging-config", LOGGING_CONFIG_FILE, "--vllm-log-file", LOG_FILE]
    if engine_memory is not None:
        residual += ["--engine-memory-bytes", str(engine_memory)]
    return {
        "name": names.CONTAINER_AGENT,
        "image": spec.agent_image or agent_image,
        "restartPolicy": "Always",
        "command": ["vllm-sleep", "agent"],
        "args": [
            "--listen-host",
            "0.0.0.0",
            "--public-port",
            str(names.PUBLIC_PORT),
            "--control-port",
            str(names.CONTROL_PORT),
            "--upstream",
            f"http://{VLLM_HOST}:{names.VLLM_PORT}",
            "--hold-timeout",
            f"{wake.timeout.total_seconds():g}",
            "--max-held",
            str(wake.max_queued),
            "--token-file",
            TOKEN_FILE,
            *residual,
        ],
        "ports": [
            {"name": "http", "containerPort": names.PUBLIC_PORT, "protocol": "TCP"},
            {"name": "control", "containerPort": names.CONTROL_PORT, "protocol": "TCP"},
        ],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        "volumeMounts": [_log_mount(), _token_mount()],
        "startupProbe": _http_probe(AGENT_HEALTH_PATH, "control", 1, 30, 2),
        "livenessProbe": _http_probe(AGENT_HEALTH_PATH, "control", 10, 3, 5),
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
