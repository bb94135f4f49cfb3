"""Container environment as kubelet builds it: literal values, secretKeyRef, fieldRef."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

SecretReader = Callable[[str, str, str], Awaitable[str | None]]


async def resolve_env(
    pod: dict[str, Any], container: dict[str, Any], pod_ip: str, read_secret: SecretReader
) -> dict[str, str]:
    md = pod["metadata"]
    fields = {
        "metadata.name": md["name"],
        "metadata.namespace": md["namespace"],
        "metadata.uid": md.get("uid", ""),
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "status.podIP": pod_ip,
        "status.hostIP": "127.0.0.1",
    }
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        src = item.get("valueFrom") or {}
        if "secretKeyRef" in src:
            ref = src["secretKeyRef"]
            value = await read_secret(md["namespace"], ref["name"], ref["key"])
            if value is None and not ref.get("optional"):
                raise RuntimeError(f"secret {ref['name']} key {ref['key']} not found")
            if value is not None:
                env[name] = value
        elif "fieldRef" in src:
            env[name] = fields.get(src["fieldRef"]["fieldPath"], "")
        else:
            log.warning("env %s: unsupported valueFrom %s ignored", name, sorted(src))
    return env
