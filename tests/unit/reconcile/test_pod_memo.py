"""A model's pod spec hashes are built once per generation, replica and GPU, not every pass: the
plan compares each pod's spec hash with the manifest it would build, every pass."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from planning import body, observed, pod, report

from vllm_sleep.api.agent_protocol import AgentState
from vllm_sleep.api.gpu_pool import GPUPoolSpec
from vllm_sleep.reconcile import plan as plan_module
from vllm_sleep.reconcile.builders import GpuAttachment
from vllm_sleep.reconcile.placement import Placement
from vllm_sleep.reconcile.plan import plan
from vllm_sleep.reconcile.pod_memo import PodMemo


def counting_builds(monkeypatch: Any) -> list[int]:
    built: list[int] = []
    real = plan_module.model_pod

    def counted(*args: Any, **kw: Any) -> Any:
        built.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(plan_module, "model_pod", counted)
    return built


def test_passes_over_an_unchanged_model_build_its_pod_once(monkeypatch: Any) -> None:
    built = counting_builds(monkeypatch)
    memo = PodMemo()
    raw = body()
    pods = [pod(raw)]
    for _ in range(5):
        p = plan(observed(raw, pods, {"m-0": report()}, pod_memo=memo))
        assert p.delete == () and p.create == ()
    assert len(built) == 1
    without = [plan(observed(raw, pods, {"m-0": report()})) for _ in range(2)]
    assert len(built) == 3 and all(p.delete == () for p in without)


def test_a_new_generation_or_placement_builds_again_and_a_changed_spec_is_still_seen() -> None:
    memo = PodMemo()
    raw = body(generation=3)
    pods = [pod(raw)]
    assert plan(observed(raw, pods, {"m-0": report()}, pod_memo=memo)).delete == ()
    changed = body(generation=4)
    changed["spec"]["image"] = "vllm/vllm-openai:v0.34.0"
    asleep = {"m-0": report(AgentState.ASLEEP)}  # awake, it would sleep before it goes
    replaced = plan(observed(changed, pods, asleep, pod_memo=memo))
    assert [d.why for d in replaced.delete] == ["spec changed"]
    pool = GPUPoolSpec.model_validate({"sharing": "TimeSlicing", "deviceMemory": "80Gi"})
    placed = Placement(GpuAttachment(pool=pool))
    moved = plan(observed(raw, pods, {"m-0": report()}, pod_memo=memo, placement=placed))
    fresh = plan(observed(raw, pods, {"m-0": report()}, placement=placed))
    assert moved.delete == fresh.delete


def test_a_spec_hash_is_kept_per_replica_and_gpu() -> None:
    memo = PodMemo()
    gpu = GpuAttachment()
    calls: list[int] = []

    def build(n: int) -> Any:
        def b() -> str:
            calls.append(n)
            return f"hash-{n}"

        return b

    assert memo.spec_hash("u", 1, 0, "img", gpu, build(0)) == "hash-0"
    assert memo.spec_hash("u", 1, 0, "img", gpu, build(9)) == "hash-0"
    assert memo.spec_hash("u", 1, 1, "img", gpu, build(1)) == "hash-1"
    seated = replace(gpu, node="n", device="n/gpu-0")
    assert memo.spec_hash("u", 1, 0, "img", seated, build(2)) == "hash-2"
    assert memo.spec_hash("u", 2, 0, "img", gpu, build(3)) == "hash-3"
    assert memo.spec_hash("u", None, 0, "img", gpu, build(4)) == "hash-4"
    assert memo.spec_hash("u", None, 0, "img", gpu, build(5)) == "hash-5"
    assert calls == [0, 1, 2, 3, 4, 5]


def test_only_the_hash_is_kept_not_the_manifest() -> None:
    # A thousand models' manifests were ~15 MiB of the operator's memory budget.
    memo = PodMemo()
    raw = body()
    plan(observed(raw, [pod(raw)], {"m-0": report()}, pod_memo=memo))
    assert all(isinstance(v, str) for v in memo._kept.values()) and memo._kept
