"""Test helpers for the mapping: validate bodies against the vendored Ongoing schemas, load fixtures, make tenants.

`tests/data/ongoing/schemas.json` is OpenAPI 3.0: `nullable: true` instead of JSON Schema's null type, and
`allOf: [{$ref}]` wrappers around nested objects. On loading, every `nullable` becomes a JSON Schema union with
null, and the document is registered under one URI so `#/components/schemas/...` refs resolve.

`validate(..., strict=True)` (the default) also closes every object schema (`additionalProperties: false`), so a
misspelt key in a body fails the test instead of being ignored; whether Ongoing's own spec closes its objects
is unknown, and closing them costs a correct body nothing.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from pipeline.config import Secret, TenantSettings

DATA = Path(__file__).parent / "data"
FIXTURES = Path(__file__).parent / "fixtures"
_URI = "urn:pipeline:ongoing-schemas"

Model = Literal["PostArticleModel", "PostOrderModel"]


def _from_openapi(node: Any, *, strict: bool) -> Any:
    """An OpenAPI 3.0 schema fragment rewritten as JSON Schema (draft 7)."""
    if isinstance(node, list):
        return [_from_openapi(item, strict=strict) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _from_openapi(value, strict=strict) for key, value in node.items()}
    if strict and "properties" in out and out.get("type") == "object":
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False):
        if "type" in out and isinstance(out["type"], str):
            out["type"] = [out["type"], "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            # A nullable allOf/$ref wrapper: the wrapped schema, or null.
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _validator(model: Model, strict: bool) -> Draft7Validator:
    raw = json.loads((DATA / "ongoing" / "schemas.json").read_text(encoding="utf-8"))
    document = {"components": _from_openapi(copy.deepcopy(raw["components"]), strict=strict)}
    registry: Registry[Any] = Registry().with_resource(_URI, Resource.from_contents(document, DRAFT7))
    return Draft7Validator({"$ref": f"{_URI}#/components/schemas/{model}"}, registry=registry)


def errors(body: object, model: Model, *, strict: bool = True) -> list[str]:
    """Every way `body` breaks the schema of `model`, as "path: message" lines (empty when it is valid)."""
    lines: list[str] = []
    for error in _validator(model, strict).iter_errors(body):
        # A nullable wrapper reports "not valid under any of the given schemas": show the non-null branch's errors.
        leaves = [leaf for leaf in error.context or [] if leaf.validator != "type" or leaf.validator_value != "null"]
        for leaf in leaves or [error]:
            lines.append(f"{'/'.join(map(str, leaf.absolute_path)) or '<root>'}: {leaf.message}")
    return sorted(lines)


def validate(body: object, model: Model, *, strict: bool = True) -> None:
    """Fail with every schema violation of `body` listed, or return None when it is a valid `model`."""
    problems = errors(body, model, strict=strict)
    if problems:
        raise AssertionError(f"{model} body is invalid:\n  " + "\n  ".join(problems))


@functools.cache
def _load(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def fixture(relative: str) -> Any:
    """A JSON fixture from tests/fixtures (e.g. "poweroffice/products.json"), as a fresh copy."""
    return copy.deepcopy(_load(relative))


def find(relative: str, key: str, value: object) -> dict[str, Any]:
    """The one record of a fixture list whose `key` equals `value` (a fresh copy, safe to change)."""
    matches = [record for record in _load(relative) if record.get(key) == value]
    if len(matches) != 1:
        raise LookupError(f"{relative}: {len(matches)} records with {key} = {value!r}")
    return copy.deepcopy(matches[0])


def tenant(**overrides: Any) -> TenantSettings:
    """The test tenant "acme" (goods owner 42) with the seed's defaults, unless overridden."""
    return TenantSettings(
        name="acme", poweroffice_client_key=Secret("client-key"), ongoing_goods_owner_id=42, **overrides
    )
