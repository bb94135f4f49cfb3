"""A kubeconfig file checked before a Kubernetes client reads it.

Both clients (kubernetes, kubernetes_asyncio) meet a file that exists but is empty, is not YAML
or is not a mapping with a TypeError, a YAML or a decoding traceback that names neither the
file nor the problem. The operator, the gateway and the CLI check first and refuse such a file
in one line that names both. A kubeconfig named (KUBECONFIG, the gateway's --kubeconfig) none of
whose files exist is refused the same way: the clients would log a warning and then report an
"invalid kube-config file" that names nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

_LISTS = ("clusters", "contexts", "users")
# The clients' own default when KUBECONFIG is unset: its absence only means "no kubeconfig".
DEFAULT_LOCATION = "~/.kube/config"


class KubeconfigError(OSError):
    """A kubeconfig that exists but cannot be used. An OSError, as for any file a process
    cannot read: the servers' `cli_main` prints it in one line and exits 1."""


def no_credentials(error: Exception | str, how: str) -> KubeconfigError:
    """Neither a pod's ServiceAccount nor a kubeconfig (the client's ConfigException `error`, or
    what is missing): the one line every process prints, ending with `how` that process is given
    credentials."""
    return KubeconfigError(f"no Kubernetes credentials ({error}): {how}")


NO_KUBECONFIG = f"no kubeconfig at {DEFAULT_LOCATION}"  # and, for the servers, not in a pod


def check_kubeconfig(paths: str) -> bool:
    """Raise KubeconfigError for the first file of `paths` (a KUBECONFIG value: one path or a
    list joined by os.pathsep, as the clients split it) that exists and is not a kubeconfig, and
    for a named list none of whose files exist (a missing file beside one that exists is skipped,
    as the clients merge what they find). False when `paths` is the clients' default location and
    it is missing: the caller says so itself, before the client logs a warning about it."""
    found = False
    for raw in paths.split(os.pathsep):
        path = os.path.expanduser(raw)
        if raw and os.path.exists(path):
            found = True
            problem = _problem(Path(path))
            if problem:
                raise KubeconfigError(f"kubeconfig {path}: {problem}")
    default = paths in (DEFAULT_LOCATION, os.path.expanduser(DEFAULT_LOCATION))  # as imported
    if paths and not found and not default:
        raise KubeconfigError(f"kubeconfig {paths}: no such file")
    return found


def _problem(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    try:
        doc = yaml.safe_load(data.decode())
    except UnicodeDecodeError:
        return "is not a text file (not UTF-8)"
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        return f"is not valid YAML{where}: {getattr(e, 'problem', None) or e}"
    if doc is None:
        return "is empty"
    if not isinstance(doc, dict):
        return f"is not a kubeconfig (a YAML {type(doc).__name__}, not a mapping)"
    for key in _LISTS:
        items = doc.get(key) or []
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and "name" in i for i in items
        ):
            return f"is not a kubeconfig ({key} must be a list of entries with a name)"
    return None
