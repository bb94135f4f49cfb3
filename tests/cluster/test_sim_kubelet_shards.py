"""A big simulated fleet in several sim-kubelet processes: each is kubelet for every Kth node,
as real nodes each run their own kubelet."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import Kube
from vllm_sleep.testing.cluster import build, controlplane
from vllm_sleep.testing.cluster.simnodes import start_sim_kubelet
from vllm_sleep.testing.kubelet.__main__ import shard_of

pytestmark = pytest.mark.cluster


def test_shard_text() -> None:
    assert shard_of("0/1") == (0, 1)
    assert shard_of("2/4") == (2, 4)
    for bad in ("4/4", "-1/2"):
        with pytest.raises(ValueError):
            shard_of(bad)


def _nodes(admin: str) -> list[str]:
    with urllib.request.urlopen(f"{admin}/nodes", timeout=10) as r:
        return sorted(n["node"] for n in json.load(r)["nodes"])


def test_each_shard_is_kubelet_for_its_own_nodes(kube: Kube, tmp_path: Path) -> None:
    if kube.kubelet_admin_url is None:
        pytest.skip("external cluster")
    bins = build.ensure_all()
    state_dir = Path("/dev/shm") / f"vso-shard-test-{os.getpid()}-{tmp_path.name}"
    state = controlplane.start(state_dir, bins)
    try:
        start_sim_kubelet(state, gpu_nodes=3, gpus_per_node=1, shards=2)
        assert {"sim-kubelet", "sim-kubelet-1"} <= set(state.pids)
        admins = [
            state.launches[n]["probe"].removesuffix("/healthz")
            for n in ("sim-kubelet", "sim-kubelet-1")
        ]
        assert admins[0] == state.kubelet_admin_url
        assert _nodes(admins[0]) == ["gpu-node-0", "gpu-node-2"]
        assert _nodes(admins[1]) == ["gpu-node-1"]
        kubectl = [str(bins["k8s"] / "kubectl"), f"--kubeconfig={state.kubeconfig}"]
        ready: dict[str, str] = {}
        for _ in range(120):
            out = subprocess.run(
                [*kubectl, "get", "nodes", "-o", "json"], capture_output=True, text=True, check=True
            ).stdout
            ready = {
                n["metadata"]["name"]: next(
                    c["status"] for c in n["status"]["conditions"] if c["type"] == "Ready"
                )
                for n in json.loads(out)["items"]
            }
            if len(ready) == 3 and set(ready.values()) == {"True"}:
                break
            time.sleep(0.5)
        assert ready == {f"gpu-node-{i}": "True" for i in range(3)}
    finally:
        controlplane.stop(state)
        shutil.rmtree(state_dir, ignore_errors=True)  # on tmpfs: RAM until removed
