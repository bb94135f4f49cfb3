"""Generated artefacts (deploy/, crds/) must match the code they are generated from."""

from __future__ import annotations

from pathlib import Path

from vllm_sleep.packaging import manifests

ROOT = Path(__file__).resolve().parents[2]


def test_deploy_base_is_up_to_date() -> None:
    assert manifests.write(ROOT, check=True) == [], "run `make manifests`"
