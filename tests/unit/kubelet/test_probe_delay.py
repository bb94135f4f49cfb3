"""The sim-kubelet probes fast while readiness is in question, then at the pod's own period."""

from __future__ import annotations

import math

from vllm_sleep.testing.kubelet.pods import FAST_PROBE_SECONDS, probe_delay


def test_fast_until_ready_and_for_a_while_after_then_the_pods_period() -> None:
    assert probe_delay(10.0, ready=False, ready_for=-math.inf) == 1.0
    assert probe_delay(10.0, ready=True, ready_for=1.0) == 1.0
    assert probe_delay(10.0, ready=True, ready_for=FAST_PROBE_SECONDS + 1) == 10.0
    assert probe_delay(0.5, ready=True, ready_for=FAST_PROBE_SECONDS + 1) == 0.5


def test_the_fast_window_after_readiness_can_be_shortened() -> None:
    from vllm_sleep.testing.kubelet.kubelet import FAST_PROBE_ENV, fast_probe_seconds

    assert probe_delay(10.0, ready=True, ready_for=6.0, fast_for=5.0) == 10.0
    assert probe_delay(10.0, ready=True, ready_for=4.0, fast_for=5.0) == 1.0
    assert fast_probe_seconds({FAST_PROBE_ENV: "5"}) == 5.0
    assert fast_probe_seconds({}) == FAST_PROBE_SECONDS


def test_fast_probing_can_be_off_every_probe_at_the_pods_period() -> None:
    from vllm_sleep.testing.kubelet.kubelet import (
        FAST_PROBE_ENV,
        FAST_PROBE_OFF,
        fast_probe_seconds,
    )

    assert fast_probe_seconds({FAST_PROBE_ENV: FAST_PROBE_OFF}) is None
    assert probe_delay(10.0, ready=False, ready_for=-math.inf, fast_for=None) == 10.0
    assert probe_delay(10.0, ready=True, ready_for=0.0, fast_for=None) == 10.0
    assert probe_delay(1.0, ready=False, ready_for=-math.inf, fast_for=None) == 1.0
