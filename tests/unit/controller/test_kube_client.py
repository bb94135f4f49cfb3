"""The operator's own Kubernetes client keeps few apiserver connections (each TLS connection
holds a 256 KiB read buffer: the client's default of 100 was tens of MB at scale), and reads a
pod LIST in pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vllm_sleep.api.names import LABEL_MODEL
from vllm_sleep.controller.kube import API_CONNECTIONS, Kube, api_client
from vllm_sleep.controller.podcache import slim


async def test_the_operators_client_keeps_at_most_api_connections() -> None:
    api = api_client()
    try:
        assert api.rest_client.pool_manager.connector.limit == API_CONNECTIONS < 100
    finally:
        await api.close()


@pytest.fixture
def bare_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No proxy variable, no netrc file."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "NETRC"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


async def test_without_proxy_or_netrc_requests_skip_the_environment_lookups(
    bare_env: pytest.MonkeyPatch,
) -> None:
    # Trusting the environment costs two worker-thread lookups per request (aiohttp).
    api = api_client()
    try:
        assert api.rest_client.pool_manager.trust_env is False
    finally:
        await api.close()


@pytest.mark.parametrize("var", ["HTTPS_PROXY", "NETRC"])
async def test_a_proxy_or_netrc_in_the_environment_is_still_honoured(
    bare_env: pytest.MonkeyPatch, tmp_path: Path, var: str
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine proxy login u password p\n")
    bare_env.setenv(var, "http://proxy:3128" if var == "HTTPS_PROXY" else str(netrc))
    api = api_client()
    try:
        assert api.rest_client.pool_manager.trust_env is True
    finally:
        await api.close()


class Answer:
    """An unpreloaded answer of the generated client, as `json_answer` reads it."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.status = 200
        self._data = data
        self.decoded = False

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def json(self) -> dict[str, Any]:
        self.decoded = True
        return self._data

    async def read(self) -> bytes:
        return b"{}"


def whole_pod(i: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"m-{i}",
            "namespace": "ns",
            "labels": {LABEL_MODEL: "m"},
            "managedFields": [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}],
        },
        "spec": {"nodeName": "n", "containers": [{"name": "vllm", "image": "i"}]},
        "status": {"phase": "Running", "podIP": f"10.0.0.{i}", "hostIP": "10.1.0.1"},
    }


class PagedPods:
    """list_namespaced_pod over 250 pods, `limit` a page, continued by token."""

    def __init__(self, log: list[str]) -> None:
        self.pods = [whole_pod(i) for i in range(250)]
        self.calls: list[dict[str, Any]] = []
        self.log = log

    async def list_namespaced_pod(self, namespace: str, **kw: Any) -> Answer:
        self.calls.append({"namespace": namespace, **kw})
        start = int(kw.get("_continue") or 0)
        end = start + kw["limit"]
        self.log.append(f"page {start}")
        more = {"continue": str(end)} if end < len(self.pods) else {}
        return Answer({"items": self.pods[start:end], "metadata": more})


async def test_pods_are_listed_in_pages_each_cut_before_the_next_is_read() -> None:
    log: list[str] = []
    kube = Kube(api_client(), list_page=100)
    try:
        paged = PagedPods(log)
        kube.core = paged  # type: ignore[assignment]

        def keep(pod: dict[str, Any]) -> dict[str, Any]:
            log.append(f"keep {pod['metadata']['name']}")
            return slim(pod)

        pods = await kube.list_pods("ns", LABEL_MODEL, keep=keep)
        assert pods == [slim(p) for p in paged.pods]
        assert [c.get("_continue") for c in paged.calls] == [None, "100", "200"]
        assert all(c["limit"] == 100 and c["label_selector"] == LABEL_MODEL for c in paged.calls)
        # A page's pods are cut to what is kept before the next page is asked for.
        assert log.index("keep m-99") < log.index("page 100") < log.index("keep m-100")
        # By default what a pass reads: no managedFields, no spec beyond the node.
        default = await kube.list_pods("ns", LABEL_MODEL)
        assert default == pods and "managedFields" not in default[0]["metadata"]
        assert default[0]["spec"] == {"nodeName": "n"}
    finally:
        await kube.api.close()


class Writes:
    """The generated client's write calls; the answers they gave."""

    def __init__(self) -> None:
        self.answers: list[Answer] = []

    async def _answer(self, *_: Any, **__: Any) -> Answer:
        answer = Answer({"kind": "Pod", "metadata": {"managedFields": [{}] * 50}})
        self.answers.append(answer)
        return answer

    create_namespaced_pod = create_namespaced_service = create_namespaced_secret = _answer
    create_namespaced_lease = _answer
    patch_namespaced_pod_status = patch_namespaced_pod = _answer
    patch_namespaced_custom_object_status = patch_cluster_custom_object_status = _answer


async def test_the_answers_of_writes_are_not_decoded() -> None:
    # A write's answer is the whole object written; the operator never reads it.
    kube = Kube(api_client(), status_window=0)
    try:
        writes = Writes()
        kube.core = kube.objects = kube.coord = writes  # type: ignore[assignment]
        manifest = {"kind": "Pod", "metadata": {"name": "m-0", "namespace": "ns"}}
        assert await kube.create_if_missing(manifest) is True
        await kube.set_routed("ns", "m-0", True, "EngineAwake")
        await kube.annotate_pod("ns", "m-0", {"a": "b"})
        await kube.patch_model_status("ns", "m", {"phase": "Asleep"})
        await kube.patch_pool_status("pool", {"devices": []})
        assert len(writes.answers) == 5
        assert not any(a.decoded for a in writes.answers)
    finally:
        await kube.api.close()


async def test_the_operators_client_keeps_no_cookies() -> None:
    # The apiserver sets none (client-go keeps none); a real jar is filtered on every request.
    import aiohttp

    api = api_client()
    try:
        assert isinstance(api.rest_client.pool_manager.cookie_jar, aiohttp.DummyCookieJar)
    finally:
        await api.close()
