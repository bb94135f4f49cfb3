"""The demo's (and the tests') wait for CRDs: Established read by polling, then the kinds served."""

from __future__ import annotations

import subprocess
from typing import Any

from vllm_sleep.demo.kube import crds_established

CRDS = ["crd/modeldeployments.vllm-sleep.io", "crd/gpupools.vllm-sleep.io"]


class Kubectl:
    """Answers `get crd/...` from a script of condition readings, then `get <kinds>`."""

    def __init__(self, readings: list[str], served: bool = True) -> None:
        self.readings, self.served = readings, served
        self.calls: list[tuple[str, ...]] = []

    def __call__(
        self, *args: str, check: bool = True, **_: Any
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(args)
        if args[1].startswith("crd/"):
            if "jsonpath={..conditions}" in args:
                return subprocess.CompletedProcess(args, 0, '[{"type":"NamesAccepted"}]', "")
            out = self.readings.pop(0) if len(self.readings) > 1 else self.readings[0]
            return subprocess.CompletedProcess(args, 0, out, "")
        code = 0 if self.served else 1
        err = "" if self.served else 'error: the server doesn\'t have a resource type "gpupools"'
        return subprocess.CompletedProcess(args, code, "", err)


def test_it_waits_until_both_are_established_and_served() -> None:
    kubectl = Kubectl(["", "True ", "True True "])  # no conditions yet, one, both
    assert crds_established(kubectl, CRDS, timeout=30) is None
    gets = [c for c in kubectl.calls if c[1].startswith("crd/")]
    assert len(gets) == 3
    assert kubectl.calls[-1][:3] == ("get", "modeldeployments,gpupools", "-A")


def test_it_says_what_it_saw_when_the_time_is_up() -> None:
    missing = crds_established(Kubectl(["True "]), CRDS, timeout=0)
    assert missing is not None and "NamesAccepted" in missing


def test_established_but_not_served_is_not_ready() -> None:
    missing = crds_established(Kubectl(["True True "], served=False), CRDS, timeout=0)
    assert missing is not None and "gpupools" in missing
