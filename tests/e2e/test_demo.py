"""`vllm-sleep demo`'s steps against the session's cluster, operator and gateway.

The demo's own set-up (start a cluster, the operator and the gateway) would duplicate the session
fixtures, so this runs the steps after it — the demo's one-GPU node, the pool and the models,
pre-warm, one request through the gateway, the swap phase, back to sleep, violations, the PNG —
the same functions the demo runs, with a captured console.
"""

from __future__ import annotations

import io
import struct
import time
from pathlib import Path

import httpx
import pytest
import yaml
from rich.console import Console

from conftest import Kube
from vllm_sleep.demo import gpunode, services
from vllm_sleep.demo.flow import (
    DemoConfig,
    Report,
    back_to_sleep,
    check_violations,
    deploy,
    request_through_gateway,
    swap_phase,
    wait_prewarmed,
)
from vllm_sleep.demo.kube import Cluster
from vllm_sleep.demo.models import DEVICE_GIB, MODELS, POOL_NODE
from vllm_sleep.demo.plot import write_png
from vllm_sleep.demo.record import Recorder
from vllm_sleep.demo.timeline import Timeline
from vllm_sleep.demo.view import swap_summary

from .conftest import Proc
from .helpers import get_model, model_pods

SCALE = 0.05  # the demo node's sim-kubelet runs at the demo's own time scale


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:8]
    width, height = struct.unpack(">II", data[16:24])  # IHDR, right after the signature
    return width, height


@pytest.mark.timeout(600)
def test_demo_steps_prewarm_wake_stream_swap_and_sleep_again_without_violations(
    kube: Kube,
    namespace: str,
    operator: Proc,
    gateway: str,
    kubelet_admin: httpx.Client,
    tmp_path: Path,
) -> None:
    cluster = Cluster(kube.kubeconfig, kube.kubectl_bin, kube.kubelet_admin_url)
    out = io.StringIO()
    console = Console(file=out, width=140)
    cfg = DemoConfig(
        namespace=namespace,
        time_scale=SCALE,
        idle_timeout="3s",
        max_tokens=8,
        load_timeout=150,
        swap_seconds=6,
        swap_rate=2,
    )
    report = Report()
    node = gpunode.ensure(cluster, tmp_path, SCALE)
    timeline = Timeline(cfg.names, int(DEVICE_GIB * 2**30))
    recorder = Recorder(cluster, node.admin_url, namespace, cfg.pool, timeline, time.monotonic())
    try:
        # idempotent re-apply
        assert (
            services.install(cluster)[0] == "kubectl apply --server-side --force-conflicts -f crds"
        )
        applied = deploy(cluster, cfg, host_scale=node.time_scale)
        assert len(applied) == len(MODELS) + 1, applied  # the pool and the models

        tracker = wait_prewarmed(cluster, cfg, console, report, recorder)
        assert tracker.all_in("Asleep")
        for m in MODELS:
            obj = get_model(kube, namespace, m.name)
            assert obj["status"]["lastSleepSeconds"] > 0  # the pre-warm sleep happened
            pod = model_pods(kube, namespace, m.name)[0]
            assert pod.spec.node_name == POOL_NODE  # every model on the demo's one GPU
            env = {e.name: e.value for e in pod.spec.containers[0].env or []}
            assert env["VLLM_SIM_PROFILE"] == "legacy"
            assert "VLLM_SIM_TIME_SCALE" not in env  # total scale == the node's scale here
        # Loaded one at a time: never two models loading or awake on the device at once.
        assert (
            max(sum(b in ("loading", "awake") for b in s.bands.values()) for s in timeline.samples)
            <= 1
        )

        chat = request_through_gateway(cluster, cfg, console, gateway, report, recorder)
        assert chat.status == 200, chat.error
        assert chat.ttft is not None and chat.total is not None and chat.ttft <= chat.total
        assert len(chat.tokens) == cfg.max_tokens, chat.tokens
        assert report.phases_during_request[0] == "Asleep", report.phases_during_request
        assert report.last_wake is not None and report.last_wake > 0
        # Only the requested model woke.
        others = [m.name for m in MODELS if m.name != cfg.chat_model]
        assert all(tracker.phase(n) == "Asleep" for n in others)

        requests = swap_phase(cluster, cfg, console, gateway, report, recorder)
        assert requests and all(r.ok for r in requests), requests

        back_to_sleep(cluster, cfg, console, report, recorder)
        assert all(
            get_model(kube, namespace, m.name)["status"]["phase"] == "Asleep" for m in MODELS
        )
        assert report.asleep_again_after is not None
        assert report.asleep_again_after >= cfg.idle_seconds * 0.5  # waited for the idle timer

        check_violations(cluster, cfg, report, recorder)
        assert report.violations == []
        summary = report.summary
        assert summary is not None
        assert summary.swaps > 0 and summary.waited > 0, (summary, report.swaps)
        assert summary.ooms == 0 and summary.to_sleeping == 0
        assert summary.max_awake == 1  # the device held one model awake at a time
        assert summary.peak_used_bytes is not None
        assert summary.peak_used_bytes <= summary.device_bytes

        console.print(swap_summary(summary, report.swaps, cfg.time_scale))
        png = write_png(timeline, report.requests, report.swaps, tmp_path / "timeline.png")
        assert png.stat().st_size > 10_000
        assert png_size(png) == (1430, 715)  # 13 x 6.5 inches at 110 dpi
        text = out.getvalue()
        assert "first token after" in text and cfg.chat_model in text
        assert f"GPU {POOL_NODE}/gpu-0" in text  # the live device line
        assert "Swaps on one GPU" in text and f"{POOL_NODE}/{POOL_NODE}" not in text
    finally:
        recorder.close()
        cluster.kubectl("delete", "mdep", "--all", "-n", namespace, "--wait=false", check=False)
        # The demo node's kubelet ends its pods; stop it only after.
        cluster.kubectl(
            "wait", "--for=delete", "pod", "--all", "-n", namespace, "--timeout=90s", check=False
        )
        cluster.kubectl("delete", "gpupool", cfg.pool, "--ignore-not-found", "--wait=false")
        gpunode.remove(cluster, node, tmp_path)
        cluster.close()
        print(out.getvalue()[-6000:])


def test_demo_manifests_apply_server_side_dry_run(kube: Kube, namespace: str) -> None:
    """The committed deploy/examples/demo/ files pass the apiserver's validation (CRD schema and
    CEL rules), not just pydantic's."""
    from vllm_sleep.demo.models import render_examples

    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(services.ROOT / "crds"))
    for name, text in render_examples().items():
        doc = yaml.safe_load(text)
        if doc["kind"] != "GPUPool":  # cluster-scoped
            doc["metadata"]["namespace"] = namespace
        r = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
        assert "created (server dry run)" in r.stdout, (name, r.stdout, r.stderr)
