"""Small Kubernetes shapes reused by both CRDs (a strict subset of the core types)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import ConfigDict, Field

from .base import ApiModel, ObjectName, cel, list_map

# Environment variable names Kubernetes accepts (any printable except '='); we keep it to the
# portable C-identifier-ish set so a typo (a space, a '=') fails at apply time.
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Variable name."
    )
    value: str = Field(default="", max_length=32768, description="Its value.")


class LocalObjectReference(ApiModel):
    name: ObjectName = Field(min_length=1, description="Name of an object in the namespace.")


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Toleration(ApiModel):
    """core/v1 Toleration; the same rules the Pod API would apply, caught at apply time."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
                    "a toleration with operator Exists must not set a value",
                    field_path=".value",
                ),
                cel(
                    "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
                    "a toleration without a key must use operator Exists",
                    field_path=".operator",
                ),
                cel(
                    "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
                    "tolerationSeconds needs effect NoExecute",
                    field_path=".tolerationSeconds",
                ),
            ]
        }
    )

    key: str | None = Field(default=None, max_length=316)
    operator: TolerationOperator | None = None
    value: str | None = Field(default=None, max_length=63)
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None

    def tolerates(self, taint: Mapping[str, Any]) -> bool:
        """Whether this toleration matches a node's taint (core/v1's rule: an empty key with
        Exists matches every key, an empty effect every effect, Equal compares values)."""
        if self.effect is not None and self.effect != taint.get("effect"):
            return False
        if self.key and self.key != taint.get("key"):
            return False
        if self.operator == TolerationOperator.EXISTS:
            return True
        return (self.value or "") == (taint.get("value") or "")


def untolerated(
    taints: Iterable[Mapping[str, Any]], tolerations: Iterable[Toleration]
) -> list[Mapping[str, Any]]:
    """The taints that keep a pod with `tolerations` off a node: NoSchedule and NoExecute ones
    none of them tolerates (PreferNoSchedule only steers the scheduler)."""
    tolerations = list(tolerations)
    return [
        t
        for t in taints
        if t.get("effect") != TaintEffect.PREFER_NO_SCHEDULE
        and not any(tol.tolerates(t) for tol in tolerations)
    ]


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """metav1.Condition, the standard shape tools (kubectl wait, Argo CD, kstatus) read."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$",
    )
    status: ConditionStatus
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = Field(default=None, ge=0)


def conditions_field(description: str) -> Any:
    """A status's `conditions`: one entry per type, merged by type (as metav1.Condition lists)."""
    return Field(default_factory=list, description=description, json_schema_extra=list_map("type"))
