"""Every ModelDeployment's served-name claim, so each model knows whether the gateway serves it.

The gateway routes by `api.served_names.resolve`; the operator applies the same function to the
same objects (fed by kopf's ModelDeployment watch) and reports a refusal as the refused object's
`Degraded` condition and a Warning Event. Nothing here is persisted: the watch's initial list
rebuilds it after a restart.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..api.demand import parse_micro_time
from ..api.model_deployment import ModelDeployment
from ..api.served_names import Claim, ExposurePolicy, Refusal, resolve

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)


class ServedNames:
    def __init__(self, exposure: ExposurePolicy | None = None) -> None:
        self._exposure = exposure or ExposurePolicy()
        self._claims: dict[Key, Claim] = {}
        self._refused: dict[Key, Refusal] = {}
        self._seen: dict[Key, tuple[Any, Any]] = {}  # (uid, generation) each claim came from

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> set[Key]:
        """Take one watch event; return the models whose refusal changed (to kick them)."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        seen = (meta.get("uid"), meta.get("generation"))
        if event_type == "DELETED":
            self._claims.pop(key, None)
            self._seen.pop(key, None)
        elif None not in seen and key in self._claims and self._seen.get(key) == seen:
            # Same object, same spec (most events are status writes): the same claim, so the
            # same answer; re-resolving every claim per event cost O(models) each.
            return set()
        else:
            self._seen[key] = seen
            claim = _claim(body)
            if claim is None:  # invalid: its own controller reports why; it claims nothing
                self._claims.pop(key, None)
            else:
                self._claims[key] = claim
        before = self._refused
        self._refused = dict(resolve(self._claims.values(), self._exposure).refused)
        return {
            k for k in before.keys() | self._refused.keys() if before.get(k) != self._refused.get(k)
        }

    def refusal(self, namespace: str, name: str) -> Refusal | None:
        return self._refused.get((namespace, name))


def _claim(body: Mapping[str, Any]) -> Claim | None:
    try:
        model = ModelDeployment.from_body(dict(body))
    except (ValidationError, ValueError):
        return None
    meta = model.metadata
    created = parse_micro_time(body.get("metadata", {}).get("creationTimestamp"))
    return Claim(meta.namespace or "", meta.name, model.spec.served_name(meta.name), created)
