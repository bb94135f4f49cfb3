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

Secret volumes (with `items`) are written the way kubelet's atomic writer writes them: the files
live in a timestamped directory, `..data` is a symlink to it and each item's path a symlink
through `..data`; an update writes a new directory and swaps `..data` in one rename, so a reader
sees the old files or the new ones, never a mix. `sync_secrets` is kubelet's periodic sync.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
DATA = "..data"

SecretReader = Callable[[str, str, str], Awaitable[str | None]]  # (namespace, name, key)


class PodVolumes:
    def __init__(self, pod: Mapping[str, Any], root: Path | None = None) -> None:
        md = pod["metadata"]
        self._pod = pod
        self._prefix = _UNSAFE.sub("_", f"sim-pod-{md['namespace']}-{md['name']}-")
        self._root_parent = root
        self._root: Path | None = None
        self._dirs: dict[str, Path] = {}
        self._written: dict[str, dict[str, str]] = {}  # secret volume -> the files it holds

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
            elif "secret" in v:
                d = self._root / _UNSAFE.sub("_", v["name"])
                d.mkdir(mode=0o755)
                self._dirs[v["name"]] = d

    async def sync_secrets(self, read: SecretReader) -> None:
        """Write each secret volume's items as they are now (a missing Secret or key: nothing
        yet, as kubelet keeps the pod waiting); an unchanged volume is not rewritten."""
        namespace = self._pod["metadata"]["namespace"]
        for v in self._pod["spec"].get("volumes") or []:
            secret, d = v.get("secret"), self._dirs.get(v["name"])
            if secret is None or d is None:
                continue
            files: dict[str, str] = {}
            for item in secret.get("items") or []:
                value = await read(namespace, secret["secretName"], item["key"])
                if value is not None:
                    files[item["path"]] = value
            if files and files != self._written.get(v["name"]):
                _write_atomically(d, files)
                self._written[v["name"]] = files

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


def _write_atomically(d: Path, files: Mapping[str, str]) -> None:
    """kubelet's atomic writer: new files in a fresh directory, then one rename of `..data`."""
    new = Path(tempfile.mkdtemp(prefix="..", dir=d))
    for path, value in files.items():
        (new / path).parent.mkdir(parents=True, exist_ok=True)
        (new / path).write_text(value)
        (new / path).chmod(0o644)
    new.chmod(0o755)
    old = (d / DATA).resolve() if (d / DATA).is_symlink() else None
    tmp = d / f"{DATA}_tmp"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(new.name)
    os.replace(tmp, d / DATA)
    for path in files:
        top = path.split("/", 1)[0]
        link = d / top
        if not link.is_symlink():
            link.symlink_to(f"{DATA}/{top}")
    if old is not None and old != new:
        shutil.rmtree(old, ignore_errors=True)
