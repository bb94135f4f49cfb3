"""pydantic JSON Schema -> Kubernetes structural OpenAPI v3 schema.

The apiserver accepts only "structural" schemas (every node typed, no $ref, no
`additionalProperties: false` next to `properties`, OpenAPI 3.0 keywords). pydantic emits JSON
Schema 2020-12; this module rewrites one into the other and fails loudly on anything it does not
know, so a new field type cannot silently produce a CRD the apiserver would reject.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

Schema = dict[str, Any]

# Keys copied as they are; everything else must be handled explicitly below.
_PASSTHROUGH = {
    "type",
    "description",
    "default",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "required",
    "nullable",
    "x-kubernetes-int-or-string",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
}


class SchemaError(ValueError):
    pass


def structural_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return _convert(raw, defs, path=model.__name__)


def _convert(node: Schema, defs: dict[str, Schema], path: str) -> Schema:
    node = _resolve(node, defs)
    node = _collapse_nullable(node, defs)
    out: Schema = {}
    for key, value in node.items():
        if key in ("title", "$schema"):
            continue  # titles are noise in `kubectl explain`
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is False:
                continue  # structural schemas forbid it next to properties; pruning covers it
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            else:
                out[key] = _convert(value, defs, f"{path}{{}}")
        elif key == "anyOf":
            if node.get("x-kubernetes-int-or-string"):
                out[key] = (
                    value  # the one anyOf Kubernetes allows: [{type: integer}, {type: string}]
                )
            else:
                raise SchemaError(f"{path}: anyOf is not structural: {value!r}")
        elif key == "exclusiveMinimum":
            out["minimum"], out["exclusiveMinimum"] = value, True  # OpenAPI 3.0 spelling
        elif key == "exclusiveMaximum":
            out["maximum"], out["exclusiveMaximum"] = value, True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default" and value is None:
            continue
        elif key in _PASSTHROUGH:
            out[key] = copy.deepcopy(value)
        else:
            raise SchemaError(f"{path}: unsupported schema keyword {key!r}")
    if "type" not in out and not out.get("x-kubernetes-int-or-string"):
        raise SchemaError(f"{path}: every node of a structural schema needs a type: {node!r}")
    if out.get("enum") and "type" not in out:
        out["type"] = _enum_type(out["enum"], path)
    return out


def _resolve(node: Schema, defs: dict[str, Schema]) -> Schema:
    ref = node.get("$ref")
    if ref is None:
        return node
    name = ref.removeprefix("#/$defs/")
    target = dict(defs[name])
    # Keys beside the $ref (description, default) override the definition's.
    target.update({k: v for k, v in node.items() if k != "$ref"})
    return _resolve(target, defs)


def _collapse_nullable(node: Schema, defs: dict[str, Schema]) -> Schema:
    """`anyOf: [X, {type: null}]` (pydantic's `X | None`) -> X with `nullable: true`."""
    options = node.get("anyOf")
    if not options:
        return node
    non_null = [o for o in options if o.get("type") != "null"]
    if len(non_null) == len(options) or len(non_null) != 1:
        return node
    merged = dict(_resolve(non_null[0], defs))
    merged.update({k: v for k, v in node.items() if k != "anyOf"})
    merged["nullable"] = True
    return merged


def _enum_type(values: list[Any], path: str) -> str:
    kinds = {type(v) for v in values}
    if kinds == {str}:
        return "string"
    if kinds == {int}:
        return "integer"
    raise SchemaError(f"{path}: mixed enum {values!r}")
