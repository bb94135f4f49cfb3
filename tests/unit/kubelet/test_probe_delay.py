"""The sim-kubelet probes fast while readiness is in question, then at the pod's own period."""

from __future__ import annotations

import math

from vllm_sleep.testing.kubelet.pods import FAST_PROBE_SECONDS, probe_delay


def test_fast_until_ready_and_for_a_while_after_then_the_pods_period() -> None:
    assert probe_delay(10.0, ready=False, ready_for=-math.inf) == 1.0
    assert probe_delay(10.0, ready=True, ready_for=1.0) == 1.0
    assert probe_delay(10.0, ready=True, ready_for=FAST_PROBE_SECONDS + 1) == 10.0
    assert probe_delay(0.5, ready=True, ready_for=FAST_PROBE_SECONDS + 1) == 0.5
