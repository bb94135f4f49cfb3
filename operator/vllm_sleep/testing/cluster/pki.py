"""Credentials for a local control plane: service-account keys, static tokens, kubeconfigs.

Static tokens instead of client certificates: no CA to run, and each identity is one line.
The apiserver self-signs its serving certificate (--cert-dir); that file holds the certificate
followed by its CA, so it doubles as the kubeconfig's CA bundle.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass(frozen=True)
class Identity:
    name: str  # kubeconfig file stem
    user: str
    groups: tuple[str, ...]
    token: str


def write_service_account_keys(state: Path) -> tuple[Path, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = state / "sa.key"
    public = state / "sa.pub"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    private.chmod(0o600)
    return private, public


def identities() -> list[Identity]:
    def tok() -> str:
        return secrets.token_hex(24)

    return [
        Identity("admin", "admin", ("system:masters",), tok()),
        Identity("kcm", "system:kube-controller-manager", (), tok()),
        Identity("scheduler", "system:kube-scheduler", (), tok()),
        # The sim-kubelet plays kubelet for every simulated node and the DRA driver; nodes'
        # own identities would need the Node authorizer's per-node credentials, so it is admin.
        Identity("kubelet", "vllm-sleep:sim-kubelet", ("system:masters",), tok()),
    ]


def write_token_file(state: Path, ids: list[Identity]) -> Path:
    path = state / "tokens.csv"
    lines = []
    for i in ids:
        groups = ",".join(i.groups)
        lines.append(
            f'{i.token},{i.user},{i.user},"{groups}"' if groups else f"{i.token},{i.user},{i.user}"
        )
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def write_kubeconfig(path: Path, server: str, ca_file: Path, ident: Identity) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "vllm-sleep-dev",
                "cluster": {"server": server, "certificate-authority": str(ca_file)},
            }
        ],
        "users": [{"name": ident.user, "user": {"token": ident.token}}],
        "contexts": [
            {"name": "vllm-sleep-dev", "context": {"cluster": "vllm-sleep-dev", "user": ident.user}}
        ],
        "current-context": "vllm-sleep-dev",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
