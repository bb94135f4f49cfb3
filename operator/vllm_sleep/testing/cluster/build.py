"""Build the control plane's binaries from Go modules into a version-keyed cache.

Why this shape (see docs/local-cluster.md): there is no Docker and no binary download here, only
the Go module proxy. `go install k8s.io/kubernetes/...@v` refuses modules with replace
directives, so each component is built from a tiny wrapper module we generate. Builds are slow
(tens of minutes cold on 2 cores), so they go to a cache outside the work tree, keyed by
component version and Go version, built into a temporary folder and renamed into place under a
lock: a crash never leaves a half cache, and a second build of the same key never happens.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from .gotool import GoError, go_env, go_version
from .lock import file_lock

VERSIONS_FILE = Path(__file__).with_name("versions.toml")


class BuildError(RuntimeError):
    """A build failed; the message carries the tail of the Go output."""


def cache_root() -> Path:
    explicit = os.environ.get("VLLM_SLEEP_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vllm-sleep-operator"


def load_versions(path: Path = VERSIONS_FILE) -> dict[str, dict[str, object]]:
    with path.open("rb") as f:
        return tomllib.load(f)


@dataclass(frozen=True)
class Component:
    """One thing to build: a wrapper Go module and the packages to compile from it."""

    name: str
    version: str
    go_mod: Callable[[Path], str]  # given the build dir, returns the wrapper go.mod text
    packages: tuple[str, ...]
    outputs: tuple[str, ...]  # binary names expected in bin/
    ldflags: Callable[[Path], str] = lambda _src: "-s -w"
    output_flag: str = ""  # "-o bin/" by default; a file path when Go would misname it
    env: dict[str, str] = field(default_factory=dict)

    def key(self, go: str) -> str:
        return f"{self.name}-{self.version}-{go}"


def _staging_replaces(src: Path, k8s_version: str) -> str:
    """Kubernetes' go.mod requires its staging modules at v0.0.0; map each to its release."""
    info = _go_json(["mod", "download", "-json", f"k8s.io/kubernetes@{k8s_version}"], src)
    text = Path(str(info["GoMod"])).read_text()
    staging = sorted(set(re.findall(r"^\s+(k8s\.io/[\w.-]+) v0\.0\.0$", text, re.M)))
    if not staging:
        raise BuildError(f"no staging modules found in k8s.io/kubernetes@{k8s_version} go.mod")
    minor = "v0." + k8s_version.removeprefix("v").split(".", 1)[1]
    lines = "\n".join(f"\t{m} => {m} {minor}" for m in staging)
    return f"replace (\n{lines}\n)\n"


def _go_json(args: list[str], cwd: Path) -> dict[str, object]:
    out = subprocess.run(["go", *args], cwd=cwd, env=_go_environ(), capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(f"go {' '.join(args)} failed:\n{out.stderr[-3000:]}")
    result: dict[str, object] = json.loads(out.stdout)
    return result


def _go_environ() -> dict[str, str]:
    root = cache_root()
    env = dict(os.environ)
    env.update(
        GOTOOLCHAIN="local",  # never download another toolchain: fail loudly instead
        CGO_ENABLED="0",  # static binaries, as upstream builds them
        GOFLAGS="-mod=mod",
        GOMODCACHE=str(root / "gomod"),
        GOCACHE=str(root / "gobuild"),
    )
    return env


def kubernetes(version: str, binaries: list[str]) -> Component:
    def go_mod(src: Path) -> str:
        tools = "\n".join(f"\tk8s.io/kubernetes/cmd/{b}" for b in binaries)
        head = (
            "module k8sbins\n\ngo 1.26.0\n\n"
            "// upstream's main-module GODEBUG is not inherited by a dependency\n"
            "godebug default=go1.26\n\n"
            f"tool (\n{tools}\n)\n\nrequire k8s.io/kubernetes {version}\n\n"
        )
        (src / "go.mod").write_text(head)
        return head + _staging_replaces(src, version)

    def ldflags(src: Path) -> str:
        # Without these the binaries report v0.0.0-master and helm's kubeVersion checks fail.
        info = _go_json(["mod", "download", "-json", f"k8s.io/kubernetes@{version}"], src)
        origin = info.get("Origin")
        commit = origin.get("Hash", "unknown") if isinstance(origin, dict) else "unknown"
        major, minor = version.removeprefix("v").split(".")[:2]
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        flags = ["-s", "-w"]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            flags += [
                f"-X {pkg}.gitVersion={version}",
                f"-X {pkg}.gitMajor={major}",
                f"-X {pkg}.gitMinor={minor}",
                f"-X {pkg}.gitTreeState=clean",
                f"-X {pkg}.buildDate={date}",
                f"-X {pkg}.gitCommit={commit}",
            ]
        return " ".join(flags)

    return Component(
        name="k8s",
        version=version,
        go_mod=go_mod,
        packages=tuple(f"k8s.io/kubernetes/cmd/{b}" for b in binaries),
        outputs=tuple(binaries),
        ldflags=ldflags,
    )


def etcd(version: str) -> Component:
    # etcd's server module has replace directives too, but its requires use real versions, so
    # the wrapper needs none. `-o bin/etcd` because Go would name the binary "v3".
    return Component(
        name="etcd",
        version=version,
        go_mod=lambda _src: (
            "module etcdbin\n\ngo 1.26.0\n\ntool go.etcd.io/etcd/server/v3\n\n"
            f"require go.etcd.io/etcd/server/v3 {version}\n"
        ),
        packages=("go.etcd.io/etcd/server/v3",),
        outputs=("etcd",),
        output_flag="bin/etcd",
    )


def helm(version: str) -> Component:
    major = version.removeprefix("v").split(".")[0]
    mod = f"helm.sh/helm/v{major}"
    return Component(
        name="helm",
        version=version,
        go_mod=lambda _src: (
            f"module helmbin\n\ngo 1.26.0\n\ntool {mod}/cmd/helm\n\nrequire {mod} {version}\n"
        ),
        packages=(f"{mod}/cmd/helm",),
        outputs=("helm",),
        ldflags=lambda _src: f"-s -w -X {mod}/internal/version.version={version}",
    )


def components(versions: dict[str, dict[str, object]] | None = None) -> list[Component]:
    v = versions or load_versions()
    k8s_bins = v["kubernetes"]["binaries"]
    assert isinstance(k8s_bins, list)
    return [
        kubernetes(str(v["kubernetes"]["version"]), [str(b) for b in k8s_bins]),
        etcd(str(v["etcd"]["version"])),
        helm(str(v["helm"]["version"])),
    ]


def ensure(component: Component, log: Callable[[str], None] = print) -> Path:
    """Return the bin/ folder of a cached build, building it first when missing."""
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    target = root / component.key(go_version())
    if (target / "BUILD-INFO.json").is_file():
        return target / "bin"
    with file_lock(root / "locks" / f"{component.name}.lock", log=log):
        if (target / "BUILD-INFO.json").is_file():  # another process built it while we waited
            return target / "bin"
        _build(component, target, log)
    return target / "bin"


def _build(component: Component, target: Path, log: Callable[[str], None]) -> None:
    tmp = target.with_name(f".tmp-{target.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    src = tmp / "src"
    src.mkdir(parents=True)
    started = time.monotonic()
    log(f"[build] {component.name} {component.version}: resolving modules")
    go_mod = component.go_mod(src)
    (src / "go.mod").write_text(go_mod)
    _run_go(["mod", "tidy"], src, log, component.name)
    ldflags = component.ldflags(src)
    out = component.output_flag or "bin/"
    args = ["build", "-v", "-trimpath", "-tags=selinux,notest", f"-ldflags={ldflags}"]
    args += ["-o", str(tmp / out), *component.packages]
    (tmp / "bin").mkdir(exist_ok=True)
    log(f"[build] {component.name}: compiling {len(component.packages)} package(s)")
    _run_go(args, src, log, component.name)
    missing = [b for b in component.outputs if not (tmp / "bin" / b).is_file()]
    if missing:
        raise BuildError(f"{component.name}: build produced no {missing}")
    info = {
        "component": component.name,
        "version": component.version,
        "go": go_version(),
        "ldflags": ldflags,
        "build_seconds": round(time.monotonic() - started, 1),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024,
        "bin_bytes": sum(f.stat().st_size for f in (tmp / "bin").iterdir()),
        "built_at": datetime.now(UTC).isoformat(),
    }
    (tmp / "BUILD-INFO.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: the cache either has the whole build or none of it
    log(f"[build] {component.name} done in {info['build_seconds']}s -> {target}")


def _run_go(args: list[str], cwd: Path, log: Callable[[str], None], name: str) -> None:
    """Run go, printing a heartbeat so a half-hour build visibly lives."""
    proc = subprocess.Popen(
        ["go", *args],
        cwd=cwd,
        env=_go_environ(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    tail: list[str] = []
    count = 0
    started = time.monotonic()
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            last = tail[-1] if tail else "-"
            mins = (time.monotonic() - started) / 60
            log(f"[build] {name}: {mins:.1f} min, {count} packages so far, last: {last}")

    threading.Thread(target=heartbeat, daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        count += 1
        tail = [*tail[-40:], line.rstrip()]
    rc = proc.wait()
    done.set()
    if rc != 0:
        text = "\n".join(tail)
        raise BuildError(f"go {args[0]} for {name} failed (exit {rc}):\n{text}")


def ensure_all(log: Callable[[str], None] = print) -> dict[str, Path]:
    """Build (or find) every component; returns component name -> bin folder."""
    try:
        return {c.name: ensure(c, log) for c in components()}
    except GoError as e:
        raise BuildError(str(e)) from e


def main() -> int:
    try:
        bins = ensure_all(lambda s: print(s, flush=True))
    except BuildError as e:
        print(f"build failed: {e}", file=sys.stderr)
        return 1
    for name, path in bins.items():
        print(f"{name}: {path}")
    return 0


__all__ = ["BuildError", "Component", "cache_root", "components", "ensure", "ensure_all", "go_env"]
