"""Kubeconfigs that carry a ServiceAccount token instead of admin's.

The operator, the gateway and the demo run with exactly the RBAC that deploy/ grants, never as
admin: their kubeconfig is the admin one with the user swapped for a minted token.
"""

from __future__ import annotations

from pathlib import Path

import yaml


def kubeconfig_with_token(admin_kubeconfig: Path, user: str, token: str, out: Path) -> Path:
    config = yaml.safe_load(admin_kubeconfig.read_text())
    config["users"] = [{"name": user, "user": {"token": token}}]
    for ctx in config["contexts"]:
        ctx["context"]["user"] = user
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out
