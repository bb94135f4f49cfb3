"""What a JSON body may cost the gateway: `read_model` agrees with json.loads, and bounds a big
body's tokens and nesting while it parses (never building the document)."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_sleep.gateway.inbound import (
    INLINE_PARSE,
    BadRequest,
    JsonLimits,
    parse_model,
    read_model,
    scan_model,
)

pytestmark = pytest.mark.unit

PAD = " " * (INLINE_PARSE + 1)  # whitespace that pushes a body onto the incremental path


def big(doc: object) -> bytes:
    return (json.dumps(doc) + PAD).encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from(["model", "messages", "stream", "x"]), json_values, max_size=4)
    | json_values
)
async def test_the_incremental_path_agrees_with_json_loads(doc: object) -> None:
    body = json.dumps(doc).encode()
    assert await scan_model(body, JsonLimits()) == parse_model(body)


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "a", "model": "b"}',  # the last wins, as json.loads
        b'{"x": {"model": "inner"}, "model": "outer"}',
        b'{"model": ["a"]}',
        b'{"model": {"a": 1}}',
        b'{"model": 7}',
        b'{"model": null}',
        b'{"model": ""}',
        b"[1, 2]",
        b'"model"',
        b'{"model": "a"} trailing',
        b'{"model": "a"',
        b'{"model": "\xff"}',
    ],
)
async def test_edge_cases_match_the_inline_path(body: bytes) -> None:
    expected = parse_model(body)
    got = await read_model(body + PAD.encode(), JsonLimits())
    if isinstance(expected, BadRequest):
        assert isinstance(got, BadRequest) and got.code == expected.code
    else:
        assert got == expected


async def test_too_many_tokens_is_413_before_the_end_of_the_body() -> None:
    body = big({"model": "m", "x": [{} for _ in range(50_000)]})
    assert await read_model(body, JsonLimits()) == "m"
    got = await read_model(body, JsonLimits(max_tokens=10_000))
    assert isinstance(got, BadRequest) and (got.status, got.code) == (413, "body_too_complex")


async def test_too_deep_is_400() -> None:
    body = b'{"model": "m", "x": ' + b"[" * 200 + b"]" * 200 + b"}" + PAD.encode()
    got = await read_model(body, JsonLimits(max_depth=128))
    assert isinstance(got, BadRequest) and (got.status, got.code) == (400, "body_too_deep")
    assert await read_model(body, JsonLimits(max_depth=256)) == "m"


async def test_an_amplifying_body_is_never_built() -> None:
    """`[{},{},...]` costs ~70 bytes of Python objects per 3 bytes of JSON when built; the
    incremental path holds only one slice's events at a time."""
    body = b'{"model": "m", "x": [' + b",".join([b"{}"] * 1_000_000) + b"]}"
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        assert await read_model(body, JsonLimits()) == "m"
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # Built (json.loads) it is ~25x len(body); here a slice's events, whatever the body's size.
    assert peak < len(body) // 2, peak


async def test_decoding_and_scanning_a_big_body_let_other_tasks_run() -> None:
    """Between two slices the event loop runs other work: a body inflating to 8 MiB is never
    one uninterrupted call (counted in loop turns, not in time)."""
    import asyncio
    import gzip

    from vllm_sleep.gateway.inbound import decode_body_async

    doc = b'{"model": "m", "x": [' + b",".join([b"{}"] * ((8 << 20) // 3)) + b"]}"
    wire = gzip.compress(doc)
    turns = 0
    done = False

    async def other() -> None:
        nonlocal turns
        while not done:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    decoded = await decode_body_async(wire, "gzip", 16 << 20)
    during_decode = turns
    assert decoded == doc
    assert await read_model(decoded, JsonLimits()) == "m"
    done = True
    await task
    assert during_decode >= 4  # one turn per MiB decoded
    assert turns - during_decode >= 100  # one per 32 KiB scanned
