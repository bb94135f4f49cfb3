"""`vllm-sleep demo`'s steps against the session's cluster, operator and gateway.

The demo's own set-up (start a cluster, the operator and the gateway) would duplicate the session
fixtures, so this runs the steps after it — deploy, pre-warm, one request through the gateway,
back to sleep, violations — the same functions the demo runs, with a captured console.
"""

from __future__ import annotations

import io

import httpx
import yaml
from rich.console import Console

from conftest import Kube
from vllm_sleep.demo import services
from vllm_sleep.demo.flow import (
    DemoConfig,
    Report,
    back_to_sleep,
    check_violations,
    deploy,
    request_through_gateway,
    wait_prewarmed,
)
from vllm_sleep.demo.kube import Cluster
from vllm_sleep.demo.models import MODELS

from .conftest import Proc
from .helpers import get_model, model_pods


def test_demo_steps_prewarm_wake_stream_and_sleep_again_without_violations(
    kube: Kube, namespace: str, operator: Proc, gateway: str, kubelet_admin: httpx.Client
) -> None:
    cluster = Cluster(kube.kubeconfig, kube.kubectl_bin, kube.kubelet_admin_url)
    out = io.StringIO()
    console = Console(file=out, width=140)
    # Engines at the session cluster's own scale (host scale x 1); a short idle timeout.
    cfg = DemoConfig(
        namespace=namespace, time_scale=1.0, idle_timeout="3s", max_tokens=8, load_timeout=150
    )
    report = Report()
    try:
        assert services.install(cluster)[0] == "kubectl apply -f crds"  # idempotent re-apply
        applied = deploy(cluster, cfg, host_scale=1.0)
        assert len(applied) == len(MODELS), applied

        tracker = wait_prewarmed(cluster, cfg, console, report)
        assert tracker.all_in("Asleep")
        for m in MODELS:
            obj = get_model(kube, namespace, m.name)
            assert obj["status"]["lastSleepSeconds"] > 0  # the pre-warm sleep happened
            pod = model_pods(kube, namespace, m.name)[0]
            env = {e.name: e.value for e in pod.spec.containers[0].env or []}
            assert env["VLLM_SIM_PROFILE"] == "legacy"
            assert "VLLM_SIM_TIME_SCALE" not in env  # total scale == host scale here

        chat = request_through_gateway(cluster, cfg, console, gateway, report)
        assert chat.status == 200, chat.error
        assert chat.ttft is not None and chat.total is not None and chat.ttft <= chat.total
        assert len(chat.tokens) == cfg.max_tokens, chat.tokens
        assert report.phases_during_request[0] == "Asleep", report.phases_during_request
        assert report.last_wake is not None and report.last_wake > 0
        # Only the requested model woke.
        others = [m.name for m in MODELS if m.name != cfg.chat_model]
        assert all(tracker.phase(n) == "Asleep" for n in others)

        back_to_sleep(cluster, cfg, console, report)
        assert get_model(kube, namespace, cfg.chat_model)["status"]["phase"] == "Asleep"
        assert report.asleep_again_after is not None
        assert report.asleep_again_after >= cfg.idle_seconds * 0.5  # waited for the idle timer

        check_violations(cluster, cfg, report)
        assert report.violations == []
        text = out.getvalue()
        assert "first token after" in text and cfg.chat_model in text
    finally:
        cluster.close()
        print(out.getvalue()[-4000:])


def test_demo_manifests_apply_server_side_dry_run(kube: Kube, namespace: str) -> None:
    """The committed deploy/examples/demo/ files pass the apiserver's validation (CRD schema and
    CEL rules), not just pydantic's."""
    from vllm_sleep.demo.models import render_examples

    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(services.ROOT / "crds"))
    for name, text in render_examples().items():
        doc = yaml.safe_load(text)
        doc["metadata"]["namespace"] = namespace
        r = kube.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(doc))
        assert "created (server dry run)" in r.stdout, (name, r.stdout, r.stderr)
