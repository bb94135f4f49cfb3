"""`vllm-sleep wake`: renews the demand Lease with the bodies every client writes (api.demand)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from vllm_sleep.api.demand import demand_lease, renew_patch
from vllm_sleep.ctl import renew_demand
from vllm_sleep.kubeconfig import DEFAULT_LOCATION

NOW = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
MDEP = {"metadata": {"name": "llama", "namespace": "team", "uid": "uid-1"}}


class ApiException(Exception):
    def __init__(self, status: int) -> None:
        self.status = status


class Coord:
    def __init__(self, *fail: int) -> None:
        self.fail = list(fail)  # statuses the next calls raise
        self.calls: list[tuple[str, Any]] = []

    def _call(self, what: str, body: Any) -> None:
        self.calls.append((what, body))
        if self.fail:
            raise ApiException(self.fail.pop(0))

    def patch_namespaced_lease(self, name: str, ns: str, body: Any) -> None:
        assert (name, ns) == ("llama-demand", "team")
        self._call("patch", body)

    def create_namespaced_lease(self, ns: str, body: Any) -> None:
        self._call("create", body)


CLIENT = SimpleNamespace(ApiException=ApiException)


def test_wake_renews_an_existing_lease() -> None:
    coord = Coord()
    renew_demand(coord, CLIENT, "team", MDEP, holder="cli", now=NOW)
    assert coord.calls == [("patch", renew_patch("cli", NOW))]


def test_wake_creates_a_missing_lease_like_the_gateway() -> None:
    coord = Coord(404)
    renew_demand(coord, CLIENT, "team", MDEP, holder="cli", now=NOW)
    lease = demand_lease(
        "llama", "team", "uid-1", holder="cli", now=NOW, block_owner_deletion=False
    )
    assert coord.calls[-1] == ("create", lease)


def test_a_lease_created_meanwhile_is_renewed() -> None:
    coord = Coord(404, 409)
    renew_demand(coord, CLIENT, "team", MDEP, holder="cli", now=NOW)
    assert [c[0] for c in coord.calls] == ["patch", "create", "patch"]


def test_status_shows_each_pool_device_with_its_memory() -> None:
    from vllm_sleep.ctl import device_rows

    pool = {
        "metadata": {"name": "h100"},
        "spec": {"deviceMemory": "80Gi"},
        "status": {
            "deviceStates": [
                {
                    "node": "n",
                    "device": "n/gpu-0",
                    "models": ["ns/a-0", "ns/b-0"],
                    "awake": ["ns/a-0"],
                    "committedBytes": 66 * 2**30,
                },
                {"node": "n", "device": "n/gpu-1"},
            ]
        },
    }
    assert device_rows([pool]) == [
        ("h100", "n/gpu-0", "2", "ns/a-0", "66.0 / 80 GiB"),
        ("h100", "n/gpu-1", "0", "-", "0.0 / 80 GiB"),
    ]


def test_without_a_kubeconfig_the_cli_says_what_to_set(
    tmp_path: Any, monkeypatch: Any, capsys: Any
) -> None:
    from kubernetes.config import kube_config

    from vllm_sleep.ctl import main

    # The client reads $KUBECONFIG once, at import: its default location, and no such file.
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", DEFAULT_LOCATION)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert main(["status"]) == 1
    err = capsys.readouterr().err
    assert "no Kubernetes credentials" in err and "KUBECONFIG" in err


class Objects:
    """CustomObjectsApi: serves `bodies` in turn (an exception is raised)."""

    def __init__(self, *bodies: Any) -> None:
        self.bodies = list(bodies)

    def get_namespaced_custom_object(self, *args: Any) -> Any:
        body = self.bodies.pop(0)
        if isinstance(body, Exception):
            raise body
        return body


class StatusError(ApiException):
    def __init__(self, status: int, reason: str, body: str) -> None:
        super().__init__(status)
        self.reason, self.body = reason, body


def test_an_api_error_is_the_apiservers_message_not_its_json(monkeypatch: Any, capsys: Any) -> None:
    import vllm_sleep.ctl as ctl

    body = (
        '{"kind":"Status","apiVersion":"v1","status":"Failure","message":'
        '"modeldeployments.vllm-sleep.io \\"nope\\" not found","reason":"NotFound","code":404}'
    )
    objs = Objects(StatusError(404, "Not Found", body))
    monkeypatch.setattr(ctl, "_clients", lambda: (objs, Coord(), CLIENT, "default"))
    assert ctl.main(["wake", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.strip() == 'error: modeldeployments.vllm-sleep.io "nope" not found'


def test_an_api_error_without_a_status_body_gives_its_code() -> None:
    from vllm_sleep.ctl import api_error

    assert api_error(StatusError(503, "Service Unavailable", "")) == (
        "error: 503 Service Unavailable"
    )


def test_wait_stops_at_failed_with_the_reason(capsys: Any) -> None:
    from vllm_sleep.ctl import _wait

    failed = {
        "status": {
            "phase": "Failed",
            "conditions": [{"type": "Degraded", "message": "m-0: CUDA out of memory"}],
        }
    }
    assert _wait(Objects(failed), "ns", "m", "Awake", timeout=60) == 1
    assert "ns/m is Failed: m-0: CUDA out of memory" in capsys.readouterr().err


def test_status_shows_activity_as_an_age_like_kubectl() -> None:
    from vllm_sleep.ctl import age

    assert age("2026-05-01T07:59:15Z", NOW) == "45s"
    assert age("2026-05-01T07:58:01Z", NOW) == "119s"
    assert age("2026-05-01T07:57:00Z", NOW) == "3m"
    assert age("2026-05-01T07:48:00Z", NOW) == "12m"
    assert age("2026-04-29T08:00:00Z", NOW) == "2d"
    assert age(None, NOW) == "-"


def test_status_lists_why_each_degraded_model_is_not_serving() -> None:
    from vllm_sleep.ctl import model_rows, problems

    degraded = {
        "metadata": {"name": "phi", "namespace": "team"},
        "spec": {"model": "m", "image": "i", "resources": {"weightsSize": "1Gi"}},
        "status": {
            "phase": "Pending",
            "awake": "0/1",
            "conditions": [
                {
                    "type": "Degraded",
                    "status": "True",
                    "reason": "Problem",
                    "message": "GPUPool 'p' does not exist",
                    "lastTransitionTime": "2026-05-01T07:00:00Z",
                }
            ],
        },
    }
    healthy = {
        "metadata": {"name": "ok", "namespace": "team"},
        "spec": {"model": "m", "image": "i", "resources": {"weightsSize": "1Gi"}},
        "status": {"conditions": [{"type": "Degraded", "status": "False", "message": "none"}]},
    }
    assert problems([degraded, healthy]) == ["team/phi: GPUPool 'p' does not exist"]
    row = model_rows([degraded], NOW)[0]
    assert row[:5] == ("team", "phi", "phi", "Pending", "0/1")


def test_a_wake_or_sleep_the_operator_would_ignore_is_refused_saying_why(
    monkeypatch: Any, capsys: Any
) -> None:
    import vllm_sleep.ctl as ctl

    def model(sleep: dict[str, Any], wake: dict[str, Any] | None = None) -> dict[str, Any]:
        spec = {"model": "m", "image": "i", "resources": {"weightsSize": "1Gi"}}
        return {**MDEP, "spec": {**spec, "sleep": sleep, "wake": wake or {}}}

    always = model({"policy": "AlwaysAwake"})
    assert "AlwaysAwake" in (ctl.ignored("sleep", always) or "")
    assert ctl.ignored("wake", always) is None
    assert "policy is Asleep" in (ctl.ignored("wake", model({"policy": "Asleep"})) or "")
    no_wake = model({"policy": "Auto"}, {"onRequest": False})
    assert "wake.onRequest is false" in (ctl.ignored("wake", no_wake) or "")
    assert ctl.ignored("sleep", no_wake) is None
    assert ctl.ignored("wake", model({})) is None

    coord = Coord()
    monkeypatch.setattr(ctl, "_clients", lambda: (Objects(always), coord, CLIENT, "team"))
    assert ctl.main(["sleep", "llama", "--wait"]) == 1  # at once, not after --timeout
    assert "team/llama: sleep.policy is AlwaysAwake" in capsys.readouterr().err
