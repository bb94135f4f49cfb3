"""The gateway's command line: defaults, the 0 = none timeouts, and refusals."""

from __future__ import annotations

import pytest

from vllm_sleep.gateway import GatewayConfig
from vllm_sleep.gateway.config import GatewayConfigError


def test_defaults_bound_a_stalled_client_but_not_a_long_generation() -> None:
    cfg = GatewayConfig.from_cli([], {})
    assert cfg.send_timeout == 60.0
    assert cfg.read_timeout is None  # a long generation may pause between tokens


def test_zero_means_no_timeout() -> None:
    cfg = GatewayConfig.from_cli(["--send-timeout", "0", "--read-timeout", "0"], {})
    assert (cfg.send_timeout, cfg.read_timeout) == (None, None)
    cfg = GatewayConfig.from_cli(["--send-timeout", "5", "--read-timeout", "300"], {})
    assert (cfg.send_timeout, cfg.read_timeout) == (5.0, 300.0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--send-timeout", "-1"],
        ["--read-timeout", "-1"],
        ["--connect-timeout", "0"],
        ["--max-body-bytes", "0"],
        ["--port", "x"],
        ["--expose", "team-a"],
        ["--expose", "team-a="],
        ["--expose", "Team_A=llama-*"],
    ],
)
def test_invalid_flags_are_refused_with_the_flag_named(argv: list[str]) -> None:
    with pytest.raises(GatewayConfigError, match=argv[0].lstrip("-").split("-")[0]):
        GatewayConfig.from_cli(argv, {})


@pytest.mark.parametrize(
    "argv",
    [
        ["--retry-after", "-1"],
        ["--retry-after", "61"],
        ["--port", "70000"],
        ["--port", "-1"],
        ["--backend-port", "0"],
        ["--backend-port", "65536"],
        ["--connect-timeout", "nan"],
        ["--read-timeout", "nan"],
        ["--send-timeout", "nan"],
        ["--demand-interval", "nan"],
    ],
)
def test_out_of_range_flags_are_refused_with_the_flag_named(argv: list[str]) -> None:
    with pytest.raises(GatewayConfigError, match=argv[0]):
        GatewayConfig.from_cli(argv, {})


def test_retry_after_up_to_what_the_sdks_obey_passes() -> None:
    assert GatewayConfig.from_cli(["--retry-after", "60"], {}).retry_after == 60
    assert GatewayConfig.from_cli(["--retry-after", "0"], {}).retry_after == 0


def test_a_refused_retry_after_is_one_line_naming_the_flag() -> None:
    with pytest.raises(GatewayConfigError) as e:
        GatewayConfig.from_cli(["--retry-after", "120"], {})
    assert str(e.value).startswith("--retry-after must be 0-60") and "\n" not in str(e.value)


def test_valid_ports_still_pass() -> None:
    cfg = GatewayConfig.from_cli(["--port", "0", "--backend-port", "65535"], {})
    assert (cfg.port, cfg.backend_port) == (0, 65535)


def test_removed_flags_are_refused() -> None:
    # spec.wake.timeout and spec.wake.maxQueued always come from the ModelDeployment (the API
    # fills their defaults), so the gateway has no second default to drift from them.
    for flag in ("--wake-timeout", "--max-queued"):
        with pytest.raises(GatewayConfigError):
            GatewayConfig.from_cli([flag, "10"], {})


def test_expose_flags_build_one_policy() -> None:
    cfg = GatewayConfig.from_cli(
        ["--expose", "team-a=team-a-*,shared-*", "--expose", "team-b=llama-8b"], {}
    )
    assert cfg.exposure.allows("team-a", "shared-qwen")
    assert cfg.exposure.allows("team-b", "llama-8b")
    assert not cfg.exposure.allows("team-b", "team-a-x")
    assert not cfg.exposure.allows("team-c", "anything")
    assert GatewayConfig.from_cli([], {}).exposure.allows("any", "name")
