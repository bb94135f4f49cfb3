"""A model's body parsed once per version of it, not once per pass.

A model's control loop passes far more often than its body changes (every pod event, agent
report and resync is a pass; only the model's own events change the body), and parsing the body
into the typed model (pydantic) was about a sixth of a steady pass. The apiserver gives each
version of an object its own resourceVersion, and the typed model is a frozen value: the same
(uid, resourceVersion) parses to the same model, which is kept (one per model) and handed out
again. A body without a resourceVersion (tests, a dry run) is parsed every time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..api.model_deployment import ModelDeployment

Parse = Callable[[Mapping[str, Any]], ModelDeployment]


class ParseMemo:
    def __init__(self, parse: Parse) -> None:
        self._parse = parse
        # (namespace, name) -> ((uid, resourceVersion), the model parsed from that version)
        self._last: dict[tuple[str, str], tuple[tuple[str, str], ModelDeployment]] = {}

    def __call__(self, body: Mapping[str, Any]) -> ModelDeployment:
        meta = body.get("metadata") or {}
        version = (meta.get("uid"), meta.get("resourceVersion"))
        key = (meta.get("namespace") or "", meta.get("name") or "")
        if version[0] is None or version[1] is None:
            return self._parse(body)
        kept = self._last.get(key)
        if kept is not None and kept[0] == version:
            return kept[1]
        model = self._parse(body)  # an invalid body raises and is not kept
        self._last[key] = ((str(version[0]), str(version[1])), model)
        return model

    def forget(self, namespace: str, name: str) -> None:
        self._last.pop((namespace, name), None)
