"""Reading a ModelDeployment body into the typed model, with a message fit for an Event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ..api.model_deployment import ModelDeployment


class InvalidModel(ValueError):
    """The object passed the CRD schema but not the model's own validation."""


def parse_model(body: Mapping[str, Any]) -> ModelDeployment:
    try:
        return ModelDeployment.from_body(dict(body))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise InvalidModel(f"spec is invalid: {problems}") from e
