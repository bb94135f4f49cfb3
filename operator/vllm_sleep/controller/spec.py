"""Reading a ModelDeployment body into the typed model, with a message fit for an Event."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..api.model_deployment import ModelDeployment
from ..reconcile.lifecycle import ModelPolicy
from ..reconcile.policy import policy_from_spec


class InvalidModel(ValueError):
    """The object passed the CRD schema but not the model's own validation."""


def parse_model(body: dict[str, Any]) -> ModelDeployment:
    try:
        return ModelDeployment.from_body(dict(body))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise InvalidModel(f"spec is invalid: {problems}") from e


def policy_for(model: ModelDeployment) -> ModelPolicy:
    return policy_from_spec(model.spec)


def drain_timeout_for(model: ModelDeployment) -> float:
    return model.spec.sleep.drain_timeout.total_seconds()
