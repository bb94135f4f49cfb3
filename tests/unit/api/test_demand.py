"""The demand Lease and sleep request: one shape for every writer, read back by the operator."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api import demand
from vllm_sleep.api.names import ANNOTATION_SLEEP_REQUEST, COMPONENT_DEMAND_LEASE, LABEL_COMPONENT

NOW = datetime(2026, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)


def test_the_operator_lease_is_empty_and_blocks_owner_deletion() -> None:
    lease = demand.demand_lease("llama", "team", "uid-1")
    assert lease["apiVersion"] == "coordination.k8s.io/v1" and lease["kind"] == "Lease"
    assert lease["metadata"]["name"] == "llama-demand"
    assert lease["metadata"]["labels"][LABEL_COMPONENT] == COMPONENT_DEMAND_LEASE
    assert lease["spec"] == {}
    (ref,) = lease["metadata"]["ownerReferences"]
    assert ref["uid"] == "uid-1" and ref["controller"] and ref["blockOwnerDeletion"]


def test_a_client_lease_differs_only_in_spec_and_owner_deletion() -> None:
    operator = demand.demand_lease("llama", "team", "uid-1")
    client = demand.demand_lease(
        "llama", "team", "uid-1", holder="gw-0", now=NOW, block_owner_deletion=False
    )
    assert client["spec"] == {"holderIdentity": "gw-0", "renewTime": "2026-05-01T12:30:45.123456Z"}
    assert client["spec"] == demand.renew_patch("gw-0", NOW)["spec"]
    (op_ref,), (cl_ref,) = (
        operator["metadata"]["ownerReferences"],
        client["metadata"]["ownerReferences"],
    )
    assert "blockOwnerDeletion" not in cl_ref
    assert {**cl_ref, "blockOwnerDeletion": True} == op_ref
    assert client["metadata"]["labels"] == operator["metadata"]["labels"]


def test_without_a_uid_the_lease_has_no_owner() -> None:
    lease = demand.demand_lease("m", "ns", None, holder="cli", now=NOW)
    assert "ownerReferences" not in lease["metadata"]


def test_holder_and_time_go_together() -> None:
    with pytest.raises(ValueError):
        demand.demand_lease("m", "ns", None, holder="cli")
    with pytest.raises(ValueError):
        demand.renew_patch("", NOW)


def test_micro_time_refuses_a_naive_time_and_converts_to_utc() -> None:
    with pytest.raises(ValueError):
        demand.micro_time(datetime(2026, 1, 1))
    plus_two = NOW.astimezone(timezone(timedelta(hours=2)))
    assert demand.micro_time(plus_two) == demand.micro_time(NOW)


@given(st.datetimes(timezones=st.just(UTC), min_value=datetime(1971, 1, 1)))
def test_micro_time_reads_back_to_the_same_instant(at: datetime) -> None:
    assert demand.parse_micro_time(demand.micro_time(at)) == at.timestamp()


@pytest.mark.parametrize("value", [None, "", "yesterday", 12])
def test_unreadable_stamps_are_none(value: object) -> None:
    assert demand.parse_micro_time(value) is None


def test_sleep_request_stamps_the_annotation() -> None:
    patch = demand.sleep_request_patch(NOW)
    stamp = patch["metadata"]["annotations"][ANNOTATION_SLEEP_REQUEST]
    assert demand.parse_micro_time(stamp) == NOW.timestamp()


def test_renew_time_reads_what_a_renewal_writes() -> None:
    assert demand.renew_time(demand.renew_spec("gw", NOW)) == NOW.timestamp()
    assert demand.renew_time({}) is None
