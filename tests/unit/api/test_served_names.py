"""The served-name rule shared by the gateway (routing) and the operator (conditions)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vllm_sleep.api.served_names import (
    Claim,
    ExposureError,
    ExposurePolicy,
    RefusalReason,
    resolve,
)

pytestmark = pytest.mark.unit


def test_oldest_claim_owns_the_name_and_newer_ones_are_told_who_owns_it() -> None:
    old = Claim("team-b", "qwen", "qwen-7b", created=100.0)
    new = Claim("aaa", "grab", "qwen-7b", created=200.0)
    res = resolve([new, old])
    assert res.owners["qwen-7b"] == old
    refusal = res.refused[("aaa", "grab")]
    assert refusal.reason == RefusalReason.CONFLICT and refusal.owner == ("team-b", "qwen")
    assert "team-b/qwen" in refusal.message


def test_unknown_age_sorts_last_and_ties_fall_back_to_namespace_and_name() -> None:
    unknown = Claim("a", "x", "m")
    b = Claim("b", "y", "m", created=5.0)
    c = Claim("c", "z", "m", created=5.0)
    assert resolve([unknown, c, b]).owners["m"] == b


def test_policy_refusal_names_what_the_namespace_may_serve() -> None:
    policy = ExposurePolicy.parse(["team-a=team-a-*"])
    res = resolve([Claim("team-a", "x", "llama"), Claim("team-z", "y", "z")], policy)
    assert res.owners == {}
    assert "team-a-*" in res.refused[("team-a", "x")].message
    assert "not listed" in res.refused[("team-z", "y")].message


@pytest.mark.parametrize("value", ["", "=x", "ns", "ns=", "ns=,", "NS=x", "a_b=x"])
def test_malformed_policy_values_are_refused_with_the_value(value: str) -> None:
    with pytest.raises(ExposureError, match="--expose"):
        ExposurePolicy.parse([value])


claims = st.lists(
    st.builds(
        Claim,
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["m1", "m2", "m3"]),
        st.sampled_from(["x", "y"]),
        st.one_of(st.none(), st.integers(0, 3).map(float)),
    ),
    unique_by=lambda c: (c.namespace, c.name),
)


@given(claims, st.randoms())
def test_every_claim_is_served_or_refused_once_and_order_never_matters(
    cs: list[Claim], rnd: object
) -> None:
    res = resolve(cs)
    shuffled = list(cs)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    again = resolve(shuffled)
    assert res == again
    served = {(c.namespace, c.name) for c in res.owners.values()}
    assert served.isdisjoint(res.refused)
    assert served | set(res.refused) == {(c.namespace, c.name) for c in cs}
    assert len(res.owners) == len({c.served_name for c in cs})
