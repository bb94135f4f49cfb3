"""GPUPool status: per device, and the pool's summary that `kubectl get gpupools` shows."""

from __future__ import annotations

from vllm_sleep.api.crds import gpu_pool_crd
from vllm_sleep.api.gpu_pool import Sharing
from vllm_sleep.reconcile.pool_status import pool_status
from vllm_sleep.scheduler import Device, Engine, EngineState, Node, Pool

GIB = 1 << 30


def test_the_summary_counts_replicas_awake_and_committed_memory_over_devices() -> None:
    pool = Pool(
        devices=(Device("n/gpu-0", "n", 80 * GIB), Device("n/gpu-1", "n", 80 * GIB)),
        nodes=(Node("n"),),
        engines=(
            Engine("ns/a-0", "ns/a", 40 * GIB, device="n/gpu-0", state=EngineState.AWAKE),
            Engine(
                "ns/b-0",
                "ns/b",
                40 * GIB,
                device="n/gpu-0",
                state=EngineState.ASLEEP,
                sleep_level=1,
                residual=2 * GIB,
            ),
            Engine("ns/c-0", "ns/c", 30 * GIB, device="n/gpu-1", state=EngineState.AWAKE),
            Engine("ns/d-0", "ns/d", 30 * GIB),  # not placed yet
        ),
    )
    status = pool_status(pool, Sharing.TIME_SLICING)
    assert status["models"] == 4
    assert status["replicas"] == 3 and status["awake"] == 2
    assert status["committedBytes"] == 72 * GIB
    assert status["committedPercent"] == 45  # of 160 GiB


def test_kubectl_get_gpupools_shows_awake_and_committed() -> None:
    (version,) = gpu_pool_crd()["spec"]["versions"]
    paths = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert paths["Awake"] == ".status.awake"
    assert paths["Committed%"] == ".status.committedPercent"
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"awake", "committedPercent", "replicas", "committedBytes"} <= set(status)
