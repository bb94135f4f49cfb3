"""The request-path bounds on the gateway's command line: defaults, 0 = none, refusals."""

from __future__ import annotations

import pytest

from vllm_sleep.gateway import GatewayConfig
from vllm_sleep.gateway.config import GatewayConfigError

pytestmark = pytest.mark.unit


def test_defaults_bound_every_part_of_a_request() -> None:
    cfg = GatewayConfig.from_cli([], {})
    assert (cfg.header_timeout, cfg.body_timeout) == (60.0, 60.0)
    assert cfg.max_buffered_bytes == 256 << 20 and cfg.max_body_chunks == 1 << 17
    assert (cfg.max_json_tokens, cfg.max_json_depth) == (1 << 22, 128)


def test_flags_set_them_and_zero_timeouts_mean_none() -> None:
    cfg = GatewayConfig.from_cli(
        [
            "--header-timeout=0",
            "--body-timeout=5",
            "--max-buffered-bytes=67108864",
            "--max-body-chunks=10",
            "--max-json-tokens=100",
            "--max-json-depth=8",
        ],
        {},
    )
    assert (cfg.header_timeout, cfg.body_timeout) == (None, 5.0)
    assert (cfg.max_buffered_bytes, cfg.max_body_chunks) == (64 << 20, 10)
    assert (cfg.max_json_tokens, cfg.max_json_depth) == (100, 8)


@pytest.mark.parametrize(
    "argv",
    [
        ["--header-timeout", "-1"],
        ["--body-timeout", "nan"],
        ["--max-buffered-bytes", "0"],
        ["--max-body-chunks", "0"],
        ["--max-json-tokens", "-5"],
        ["--max-json-depth", "0"],
        ["--max-buffered-bytes", "1024"],  # below --max-body-bytes: no body could ever fit
    ],
)
def test_invalid_bounds_are_refused_with_the_flag_named(argv: list[str]) -> None:
    with pytest.raises(GatewayConfigError, match=argv[0]):
        GatewayConfig.from_cli(argv, {})
