"""Validate Ongoing request bodies against the vendored published schemas (tests/data/ongoing/schemas.json).

The file holds OpenAPI 3.0 fragments. Loading turns them into JSON Schema 2020-12:
- `nullable: true` becomes a type union with "null" (or `anyOf [..., {"type": "null"}]` around an `allOf`/`$ref`);
- every object schema with `properties` gets `additionalProperties: false`, so a misspelt field (the API's own
  spelling is `purcaseCurrencyCode`) fails here instead of being silently ignored by the server.
Formats are not checked: the official examples send `"deliveryDate": "2019-10-10"` where the schema says
date-time, and the server accepts it.

`validate_article(body)` / `validate_order(body)` raise `jsonschema.ValidationError`; `order_problem` and
`article_problem` return the message or None (the shape `FakeOngoing(validator=...)` wants: `fake_validator`).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator

from pipeline.clients.ongoing import PostArticleModel, PostOrderModel

SCHEMAS = Path(__file__).parent / "data" / "ongoing" / "schemas.json"


def _convert(node: Any) -> Any:
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert(v) for k, v in node.items() if not k.startswith("x-")}
    if out.get("type") == "object" and "properties" in out:
        out.setdefault("additionalProperties", False)
    if out.pop("nullable", False):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
            if "enum" in out:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _document() -> dict[str, Any]:
    raw = json.loads(SCHEMAS.read_text(encoding="utf-8"))
    return {"components": _convert(raw["components"])}


@functools.cache
def _validator(model: str) -> Draft202012Validator:
    doc = _document()
    if model not in doc["components"]["schemas"]:
        raise KeyError(model)
    schema = {"$ref": f"#/components/schemas/{model}", **doc}
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _validate(model: str, body: Any) -> None:
    error = jsonschema.exceptions.best_match(_validator(model).iter_errors(body))
    if error is not None:
        raise error


def validate_article(body: Any) -> None:
    """Raise ValidationError unless `body` is a valid PostArticleModel."""
    _validate("PostArticleModel", body)


def validate_order(body: Any) -> None:
    """Raise ValidationError unless `body` is a valid PostOrderModel."""
    _validate("PostOrderModel", body)


def _problem(model: str, body: Any) -> str | None:
    error = jsonschema.exceptions.best_match(_validator(model).iter_errors(body))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(body)"
    return f"{model} {where}: {error.message}"


def article_problem(body: Any) -> str | None:
    return _problem("PostArticleModel", body)


def order_problem(body: Any) -> str | None:
    return _problem("PostOrderModel", body)


def fake_validator(kind: str, body: dict[str, Any]) -> str | None:
    """For `FakeOngoing(validator=...)`: check every write body the fake receives."""
    return article_problem(body) if kind == "article" else order_problem(body)


# ---------------------------------------------------------------------------------------------------------------
# Typed body builders for tests. Every body they return has been validated.


def article_body(goods_owner_id: int, number: str, name: str | None = None, **extra: Any) -> PostArticleModel:
    body: PostArticleModel = {
        "goodsOwnerId": goods_owner_id,
        "articleNumber": number,
        "articleName": name if name is not None else f"Article {number}",
    }
    body.update(extra)  # type: ignore[typeddict-item]
    validate_article(body)
    return body


def order_body(
    goods_owner_id: int,
    number: str,
    lines: Sequence[tuple[str, float]],
    *,
    invoice_id: str | None = None,
    delivery_date: str = "2026-11-02",
    **extra: Any,
) -> PostOrderModel:
    """An order with one line per (article number, quantity), row numbers "1", "2", …"""
    body: PostOrderModel = {
        "goodsOwnerId": goods_owner_id,
        "orderNumber": number,
        "deliveryDate": delivery_date,
        "goodsOwnerOrderId": invoice_id,
        "consignee": {
            "customerNumber": "C1",
            "name": "Kunde AS",
            "address1": "Storgata 1",
            "postCode": "0155",
            "city": "Oslo",
            "countryCode": "NO",
        },
        "orderLines": [
            {
                "rowNumber": str(i),
                "articleNumber": article,
                "numberOfItems": quantity,
                "prices": {"linePrice": 10.0 * quantity, "currencyCode": "NOK"},
            }
            for i, (article, quantity) in enumerate(lines, start=1)
        ],
    }
    body.update(extra)  # type: ignore[typeddict-item]
    validate_order(body)
    return body
