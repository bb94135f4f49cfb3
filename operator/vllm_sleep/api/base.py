"""The base of every API model, and the typed field kinds shared by the CRDs.

Conventions: camelCase on the wire (aliases), snake_case in Python; unknown fields are errors
(kubectl's strict validation does the same server-side); models are frozen values. Everything
that must also hold server-side is expressed in the JSON schema (pattern, bounds, enums) or as a
CEL rule via `cel()`, so `crdgen` turns these classes into the CRDs without a second source.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)
from pydantic.alias_generators import to_camel
from pydantic.config import JsonDict

from .duration import DURATION_PATTERN, format_duration, parse_duration

CEL_KEY = "x-kubernetes-validations"


class ApiModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_enum_values=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the apiserver would hold it: camelCase, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> JsonDict:
    """One `x-kubernetes-validations` entry. `field_path` points the error at the right field."""
    out: JsonDict = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def duration_rule(check: str, message: str) -> JsonDict:
    """A CEL bound on a Duration field (`check` compares `duration(self)`), checked only when the
    value is well-formed: the apiserver runs a field's rules even when its pattern failed, and
    `duration()` of a malformed string added a second error to the pattern's ("type conversion
    error from 'string' to 'google.protobuf.Duration'")."""
    return cel(f"!self.matches(r'{DURATION_PATTERN}') || {check}", message)


def list_map(*keys: str) -> JsonDict:
    """Schema marks for a list Kubernetes merges item by item, each item known by `keys`."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


def _duration(raw: Any) -> timedelta:
    if isinstance(raw, timedelta):
        return raw
    return parse_duration(raw)


# A Go-style duration string on the wire ("10m"), a timedelta in Python.
Duration = Annotated[
    timedelta,
    BeforeValidator(_duration),
    PlainSerializer(format_duration, return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 64}),
]


def duration_field(default: timedelta, description: str, *rules: JsonDict) -> Any:
    """A Duration field whose CRD default is the Go spelling ("10m"), not pydantic's ISO 8601."""
    extra: JsonDict = {"default": format_duration(default)}
    if rules:
        extra[CEL_KEY] = list(rules)
    return Field(default=default, description=description, json_schema_extra=extra)


# DNS-1123 label (Kubernetes object names that end up in labels and DNS).
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# DNS-1123 subdomain (most object names, e.g. Secrets, ServiceAccounts).
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The name of a Kubernetes object that has DNS-1123 subdomain names (most kinds).
ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
