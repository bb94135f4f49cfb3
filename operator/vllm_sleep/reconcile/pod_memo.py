"""A model's pod spec hashes, kept across its passes. Pure (no I/O; the controller owns one per
model and hands it to `plan` through `Observed`).

Every pass compares each pod's spec-hash annotation with the hash of the pod it would build now
(`plan.converge`), and building and hashing a manifest was about a tenth of the operator's CPU in
a bring-up, for the same answer every pass. Only the hash is kept (a short string): keeping
whole manifests cost a thousand models ~10 MiB of the operator's 300 MB budget, and a pod is
built in full only to be created. What shapes a model's pod: its spec (every change of
which bumps `metadata.generation`), its identity, the agent image, the replica and the GPU it is
placed on (a GPUPool's spec can change without the model's generation): that is the key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .builders import GpuAttachment

KEEP = 32  # values per model at most (replicas x devices of the current generation)


class PodMemo:
    def __init__(self) -> None:
        self._generation: tuple[str, int] | None = None  # (uid, generation) the entries are of
        self._kept: dict[tuple[Any, ...], str | None] = {}

    def spec_hash(
        self,
        uid: str,
        generation: int | None,
        replica: int,
        agent_image: str,
        gpu: GpuAttachment,
        build: Callable[[], str | None],
    ) -> str | None:
        """The spec hash `build()` makes, built once per key. Without a generation (an object
        not from the apiserver) nothing is kept."""
        if generation is None:
            return build()
        if self._generation != (uid, generation) or len(self._kept) >= KEEP:
            self._generation = (uid, generation)
            self._kept.clear()
        pool = gpu.pool.model_dump_json() if gpu.pool is not None else None
        key = (replica, agent_image, gpu.claim, gpu.node, gpu.device, pool)
        if key not in self._kept:
            self._kept[key] = build()
        return self._kept[key]
