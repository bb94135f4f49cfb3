"""A watch event costs work for what it changes, not for the fleet: one model's event resolves
only the served names it touches and reports only the refusals that can have moved, and a pod
is found by its key, so a 1,000-model bring-up is not O(models^2) in the gateway.

The served-name answer itself must stay exactly `api.served_names.resolve` over every claim:
the property test below checks the incremental index against it after every event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.served_names import Claim, ExposurePolicy, Resolution, resolve
from vllm_sleep.gateway import MemoryDemand, routing
from vllm_sleep.gateway.metrics import GatewayMetrics
from vllm_sleep.gateway.router import Router
from vllm_sleep.gateway.routing import ModelKey, ModelSpec, ModelTable, PodState

pytestmark = pytest.mark.unit

FLEET = 50


def fleet(namespace: str = "ns") -> list[ModelSpec]:
    return [
        ModelSpec(ModelKey(namespace, f"m{i}"), f"served-{i}", "Pending", created=1000 + i)
        for i in range(FLEET)
    ]


class ResolveSpy:
    """Counts the claims every `resolve` call of the router's table is handed."""

    def __init__(self) -> None:
        self.claims: list[int] = []

    def __call__(self, claims: Iterable[Claim], policy: ExposurePolicy | None = None) -> Resolution:
        listed = list(claims)
        self.claims.append(len(listed))
        return resolve(listed, policy)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> ResolveSpy:
    s = ResolveSpy()
    monkeypatch.setattr(routing, "resolve", s)
    return s


def test_a_status_write_resolves_no_served_name(spy: ResolveSpy) -> None:
    table = ModelTable()
    table.replace_all(fleet(), None)
    spy.claims.clear()
    spec = fleet()[7]
    table.upsert_model(ModelSpec(spec.key, spec.served_name, "Awake", created=spec.created))
    assert spy.claims == []
    assert table.lookup("served-7").phase == "Awake"  # type: ignore[union-attr]


def test_a_model_event_resolves_only_the_names_it_touches(spy: ResolveSpy) -> None:
    table = ModelTable()
    table.replace_all(fleet(), None)
    spy.claims.clear()
    new = ModelSpec(ModelKey("ns", "new"), "served-3", created=5000)  # claims a taken name
    table.upsert_model(new)
    renamed = ModelSpec(ModelKey("ns", "m9"), "fresh", created=1009)
    table.upsert_model(renamed)
    table.remove_model(ModelKey("ns", "m3"))
    # Each resolve saw the claims on one name: at most the two on "served-3".
    assert spy.claims and max(spy.claims) <= 2, spy.claims
    assert table.lookup("served-3") == new and table.lookup("fresh") == renamed
    assert table.lookup("served-9") is None and table.refused == {}


def test_the_router_looks_only_at_refusals_the_event_can_move() -> None:
    # Every model of the fleet is refused by the policy; a new model elsewhere must not make
    # the router re-read each of their refusals.
    router = Router(
        MemoryDemand(),
        GatewayMetrics(),
        demand_interval=10.0,
        exposure=ExposurePolicy.parse(["open=*"]),
    )
    router.replace_models(fleet("closed"))
    assert len(router.table.refused) == FLEET
    looked: list[ModelKey] = []
    lookup_key = router.table.lookup_key

    def counting(key: ModelKey) -> Any:
        looked.append(key)
        return lookup_key(key)

    router.table.lookup_key = counting  # type: ignore[method-assign]
    router.upsert_model(ModelSpec(ModelKey("open", "a"), "a", created=1))
    router.upsert_model(ModelSpec(ModelKey("closed", "m0"), "other", created=1000))
    assert set(looked) <= {ModelKey("open", "a"), ModelKey("closed", "m0")}, looked


def test_a_relabelled_pod_leaves_its_old_model() -> None:
    # Found by its key: a pod upserted under another model is no longer the old one's
    # replica, and its removal leaves neither model routing to it.
    table = ModelTable()
    for i in range(FLEET):
        table.upsert_pod(PodState("ns", f"p{i}", f"m{i}", f"http://10.0.0.{i}:8000", True))
    moved = PodState("ns", "p1", "m2", "http://10.0.0.1:8000", True)
    table.upsert_pod(moved)
    assert [r.pod for r in table.awake_replicas(ModelKey("ns", "m1"))] == []
    assert ("ns", "p1") in [r.pod for r in table.awake_replicas(ModelKey("ns", "m2"))]
    assert table.remove_pod("ns", "p1") == ModelKey("ns", "m2")
    assert [r.pod for r in table.awake_replicas(ModelKey("ns", "m2"))] == [("ns", "p2")]
    assert table.remove_pod("ns", "p1") is None


_specs = st.builds(
    ModelSpec,
    key=st.builds(ModelKey, st.sampled_from(["a", "b", "open"]), st.sampled_from(["x", "y", "z"])),
    served_name=st.sampled_from(["s1", "s2", "open-1"]),
    phase=st.sampled_from(["Pending", "Awake"]),
    created=st.sampled_from([0, 1, 2, 3]),
)
_events = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), _specs),
        st.tuples(st.just("remove"), _specs),
        st.tuples(st.just("relist"), st.lists(_specs, max_size=5)),
    ),
    max_size=25,
)


@given(_events, st.booleans())
def test_the_incremental_index_answers_as_resolving_every_claim(
    events: list[tuple[str, Any]], with_policy: bool
) -> None:
    policy = ExposurePolicy.parse(["open=open-*", "a=s*"]) if with_policy else None
    metrics = GatewayMetrics()
    router = Router(MemoryDemand(), metrics, demand_interval=10.0, exposure=policy)
    table = router.table
    live: dict[ModelKey, ModelSpec] = {}
    for kind, arg in events:
        if kind == "upsert":
            router.upsert_model(arg)
            live[arg.key] = arg
        elif kind == "remove":
            router.remove_model(arg.key)
            live.pop(arg.key, None)
        else:
            router.replace_models(arg)
            live = {s.key: s for s in arg}
        whole = resolve(
            [
                Claim(s.key.namespace, s.key.name, s.served_name, s.created or None)
                for s in live.values()
            ],
            policy,
        )
        assert table.refused == {ModelKey(*k): r for k, r in whole.refused.items()}
        for served in ("s1", "s2", "open-1"):
            owner = whole.owners.get(served)
            spec = table.lookup(served)
            assert (spec and spec.key) == (owner and ModelKey(owner.namespace, owner.name))
            assert spec is None or spec == live[spec.key]
        exported = {  # what the router reported: one series per refusal, none left over
            (x.labels["namespace"], x.labels["name"], x.labels["served_name"], x.labels["reason"])
            for family in metrics.registry.collect()
            if family.name == "vllm_sleep_gateway_served_name_conflicts"
            for x in family.samples
            if x.value == 1.0
        }
        assert exported == {
            (k.namespace, k.name, live[k].served_name, r.reason.value)
            for k, r in table.refused.items()
        }
