"""`vllm-sleep wake`: renews the demand Lease with the bodies every client writes (api.demand)."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

from vllm_sleep.api.demand import demand_lease, renew_patch
from vllm_sleep.ctl import renew_demand

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
