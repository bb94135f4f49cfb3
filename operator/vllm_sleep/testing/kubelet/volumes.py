"""A simulated pod's emptyDir volumes: one directory per volume, shared by its containers.

Simulated containers are coroutines in the sim-kubelet's process, so they share its filesystem
and cannot have a mount namespace. A container's view of its mounts is given the way its
addresses are (`ips.localize`): every path under one of its emptyDir `mountPath`s, in its
arguments (`--flag PATH` or `--flag=PATH`) and its environment values, is rewritten to the
volume's directory before the process starts. Files it writes there hold those rewritten
paths, so what one container writes naming a path (the agent's logging configuration for vLLM)
reads right in another that mounts the same volume at the same path, as in a real pod.

Like kubelet's, a volume lives as long as the pod, across container restarts, and is removed
with it. Not simulated: `sizeLimit` (never enforced), `medium: Memory` (not counted in the
node's memory), other volume kinds (their mount paths are left as they are).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class PodVolumes:
    def __init__(self, pod: Mapping[str, Any], root: Path | None = None) -> None:
        md = pod["metadata"]
        self._pod = pod
        self._prefix = _UNSAFE.sub("_", f"sim-pod-{md['namespace']}-{md['name']}-")
        self._root_parent = root
        self._root: Path | None = None
        self._dirs: dict[str, Path] = {}

    def create(self) -> None:
        """Make the pod's emptyDir directories (once, before its first container starts)."""
        if self._root is not None:
            return
        self._root = Path(tempfile.mkdtemp(prefix=self._prefix, dir=self._root_parent))
        for v in self._pod["spec"].get("volumes") or []:
            if "emptyDir" in v:
                d = self._root / _UNSAFE.sub("_", v["name"])
                d.mkdir(mode=0o777)  # kubelet's emptyDir: writable by any container's user
                self._dirs[v["name"]] = d

    def remove(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
        self._root, self._dirs = None, {}

    def directory(self, volume: str) -> Path | None:
        return self._dirs.get(volume)

    def view(self, container: Mapping[str, Any]) -> MountView:
        """The container's emptyDir mounts: its mountPath -> the directory on this machine."""
        mounts: dict[str, Path] = {}
        for m in container.get("volumeMounts") or []:
            d = self._dirs.get(m["name"])
            if d is None:
                continue
            mounts[_norm(m["mountPath"])] = d / m["subPath"] if m.get("subPath") else d
        return MountView(mounts)


class MountView:
    def __init__(self, mounts: Mapping[str, Path]) -> None:
        # Longest first: a mount inside another mount wins for the paths under it.
        self._mounts = sorted(mounts.items(), key=lambda kv: len(kv[0]), reverse=True)

    def path(self, value: str) -> str:
        """`value` with a leading mount path replaced by its directory; anything else as is."""
        for mount, d in self._mounts:
            if value == mount:
                return str(d)
            if value.startswith(mount + "/"):
                return str(d / value[len(mount) + 1 :])
        return value

    def args(self, args: list[str]) -> list[str]:
        out = []
        for a in args:
            flag, eq, val = a.partition("=")
            out.append(f"{flag}={self.path(val)}" if eq and flag.startswith("-") else self.path(a))
        return out

    def env(self, env: Mapping[str, str]) -> dict[str, str]:
        return {k: self.path(v) for k, v in env.items()}


def _norm(path: str) -> str:
    return path.rstrip("/") or "/"
