"""Which simulated GPU a device-plugin pod gets (sim-kubelet, no DRA claim).

A CI run failed because an unpooled model's pod (exclusive `nvidia.com/gpu`) was given the GPU
where a finished test's pooled engines were still changing memory: the choice counted only live
pods, tied, and took the first device. NVIDIA's plugin gives an exclusive pod a GPU of its own.
"""

from __future__ import annotations

from vllm_sleep.testing.kubelet.nodes import choose_device

GPUS = ["gpu-0", "gpu-1"]


def test_an_exclusive_pod_gets_a_device_no_engine_holds() -> None:
    # gpu-0: two engines of a deleted namespace still stopping (their pods are gone); gpu-1 free.
    assert choose_device(GPUS, {}, {"gpu-0": 2}, exclusive=True) == "gpu-1"
    # Pods tie, engines decide.
    assert (
        choose_device(GPUS, {"gpu-0": 1, "gpu-1": 1}, {"gpu-0": 2, "gpu-1": 1}, exclusive=True)
        == "gpu-1"
    )


def test_a_time_sliced_pod_takes_the_fewest_pods_or_its_seat() -> None:
    assert choose_device(GPUS, {"gpu-0": 2, "gpu-1": 1}, {}, exclusive=False) == "gpu-1"
    assert (
        choose_device(GPUS, {"gpu-0": 2, "gpu-1": 1}, {}, exclusive=False, seat="gpu-0") == "gpu-0"
    )
    # A seat on another node's device name is ignored by the caller; an unknown one here too.
    assert choose_device(GPUS, {"gpu-0": 2}, {}, exclusive=False, seat="gpu-7") == "gpu-1"


def test_two_exclusive_pods_never_share_while_a_device_is_not_taken() -> None:
    # Two replicas arrive together: neither engine holds memory yet, and gpu-1 has a time-sliced
    # pod. Fewest pods alone put both replicas on gpu-0 (1 vs 1 after the first).
    first = choose_device(GPUS, {"gpu-1": 1}, {"gpu-1": 1}, exclusive=True)
    assert first == "gpu-0"
    second = choose_device(
        GPUS, {"gpu-0": 1, "gpu-1": 1}, {"gpu-1": 1}, exclusive=True, taken=frozenset({first})
    )
    assert second == "gpu-1"


def test_an_exclusive_pod_waits_while_every_gpu_is_held() -> None:
    from vllm_sleep.testing.kubelet.nodes import exclusive_free

    # A time-sliced test's engines still stopping on both GPUs: none is free for an exclusive
    # pod; once one GPU's engines are gone, it is.
    assert not exclusive_free(GPUS, {"gpu-0": 2, "gpu-1": 1}, frozenset())
    assert not exclusive_free(GPUS, {"gpu-1": 1}, frozenset({"gpu-0"}))  # gpu-0: a pod's
    assert exclusive_free(GPUS, {"gpu-0": 2, "gpu-1": 0}, frozenset())
