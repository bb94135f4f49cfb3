"""The demo's view of a cluster: kubectl for what a user would type, the API for polling."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ..api.demand import sleep_request_patch  # what `vllm-sleep sleep` stamps: one sleep path
from ..api.names import GROUP, MODEL_DEPLOYMENT_PLURAL, VERSION


class DemoError(RuntimeError):
    """A step failed; the message says what and where to look."""


Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]  # (*args, check=...)
_ESTABLISHED = (
    'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Established")].status}{" "}{end}'
)


def crds_established(kubectl: Kubectl, crds: list[str], timeout: float = 120.0) -> str | None:
    """Wait until every CRD in `crds` (`crd/<name>`) is Established and its kind served: None,
    or what was last seen when `timeout` passed. Polled with GETs rather than `kubectl wait`,
    whose watch a starved apiserver can refuse (it then exits at once) and which fails on a CRD
    that has no conditions yet; on a loaded host establishing can also take over a minute."""
    deadline = time.monotonic() + timeout
    while True:
        got = kubectl("get", *crds, "-o", _ESTABLISHED, check=False)
        seen = got.stdout.split().count("True") if got.returncode == 0 else 0
        if seen == len(crds):
            kinds = ",".join(crd.removeprefix("crd/").split(".", 1)[0] for crd in crds)
            served = kubectl("get", kinds, "-A", check=False)
            if served.returncode == 0:
                return None
            got = served
        if time.monotonic() > deadline:
            conditions = kubectl("get", *crds, "-o", "jsonpath={..conditions}", check=False)
            said = (got.stderr or got.stdout).strip()
            return f"{said or 'not Established'}; conditions: {conditions.stdout or '-'}"
        time.sleep(0.5)


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: str
    kubelet_admin_url: str | None
    _api: Any = field(default=None, repr=False)

    @property
    def api(self) -> Any:
        if self._api is None:
            from kubernetes import config

            self._api = config.new_client_from_config(config_file=str(self.kubeconfig))
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise DemoError(f"kubectl {' '.join(args)} failed:\n{proc.stderr.strip()}")
        return proc

    def apply(self, manifests: list[dict[str, Any]]) -> str:
        out = self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests))
        return out.stdout.strip()

    def ensure_namespace(self, name: str, timeout: float = 30.0) -> None:
        """Create it and wait for its default ServiceAccount: until KCM made it, the
        ServiceAccount admission plugin rejects the operator's pods."""
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        except client.ApiException as e:
            if e.status != 409:
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                core.read_namespaced_service_account("default", name)
                return
            except client.ApiException:
                time.sleep(0.2)
        raise DemoError(f"namespace {name}: no default ServiceAccount after {timeout:.0f}s")

    def models(self, namespace: str) -> dict[str, dict[str, Any]]:
        from kubernetes import client

        listed: dict[str, Any] = client.CustomObjectsApi(  # type: ignore[assignment]
            self.api
        ).list_namespaced_custom_object(GROUP, VERSION, namespace, MODEL_DEPLOYMENT_PLURAL)
        return {it["metadata"]["name"]: it for it in listed["items"]}

    def request_sleep(self, namespace: str, name: str) -> None:
        """What `vllm-sleep sleep NAME` does: an annotation (metadata, not spec: GitOps owns spec)."""
        from kubernetes import client

        client.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            MODEL_DEPLOYMENT_PLURAL,
            name,
            sleep_request_patch(datetime.now(UTC)),
        )

    def violations(self, namespace: str) -> list[dict[str, Any]]:
        """Contract violations of every simulated engine in `namespace` (sim-kubelet admin API)."""
        import httpx

        if not self.kubelet_admin_url:
            raise DemoError("no sim-kubelet admin API on this cluster")
        r = httpx.get(
            f"{self.kubelet_admin_url}/violations", params={"namespace": namespace}, timeout=10
        )
        r.raise_for_status()
        return list(r.json()["violations"])
