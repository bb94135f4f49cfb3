"""Find the Go toolchain and ask it about itself, with a clear error when it is missing."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess


class GoError(RuntimeError):
    pass


@functools.cache
def go_version() -> str:
    """e.g. "go1.26.8"; part of every cache key (a new Go rebuilds, an old cache stays valid)."""
    return go_env("GOVERSION")


def go_env(name: str) -> str:
    if shutil.which("go") is None:
        raise GoError(
            "Go is not installed or not on PATH. The local control plane builds Kubernetes, etcd "
            "and helm from Go modules; install Go >= 1.26 (https://go.dev/dl/) and retry."
        )
    out = subprocess.run(
        ["go", "env", name],
        capture_output=True,
        text=True,
        env={**os.environ, "GOTOOLCHAIN": "local"},
    )
    if out.returncode != 0:
        raise GoError(f"`go env {name}` failed: {out.stderr.strip()}")
    return out.stdout.strip()
