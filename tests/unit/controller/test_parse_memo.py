"""A model's body is parsed once per version (uid, resourceVersion), not once per pass."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from vllm_sleep.controller.parse_memo import ParseMemo


def body(rv: str | None, uid: str = "u", name: str = "m") -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "ns", "name": name, "uid": uid}
    if rv is not None:
        meta["resourceVersion"] = rv
    return {"metadata": meta}


def counting() -> tuple[list[Mapping[str, Any]], Any]:
    seen: list[Mapping[str, Any]] = []

    def parse(b: Mapping[str, Any]) -> Any:
        seen.append(b)
        if b.get("bad"):
            raise ValueError("spec is invalid")
        return object()

    return seen, parse


def test_the_same_version_is_parsed_once_a_new_one_again() -> None:
    seen, parse = counting()
    memo = ParseMemo(parse)
    first = memo(body("1"))
    assert memo(body("1")) is first
    assert len(seen) == 1
    second = memo(body("2"))
    assert second is not first and len(seen) == 2
    assert memo(body("2", uid="other")) is not second  # recreated under the same name
    assert memo(body("1", name="n")) is not first  # another model
    assert len(seen) == 4


def test_a_body_without_a_version_is_parsed_every_time_and_errors_are_not_kept() -> None:
    seen, parse = counting()
    memo = ParseMemo(parse)
    memo(body(None))
    memo(body(None))
    assert len(seen) == 2
    bad = {**body("3"), "bad": True}
    for _ in range(2):
        with pytest.raises(ValueError):
            memo(bad)
    assert len(seen) == 4


def test_forget_drops_the_kept_model() -> None:
    seen, parse = counting()
    memo = ParseMemo(parse)
    memo(body("1"))
    memo.forget("ns", "m")
    memo(body("1"))
    assert len(seen) == 2
