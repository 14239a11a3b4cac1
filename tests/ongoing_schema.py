"""Ongoing request bodies for the client, fake and sender tests, checked against the vendored schemas.

Validation itself lives in `tests.mapping_schema` (one loader for tests/data/ongoing/schemas.json, objects
closed so a misspelt field fails). `fake_validator` is the shape `FakeOngoing(validator=...)` wants: it returns
the problems of a body the fake receives, or None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pipeline.clients.ongoing import PostArticleModel, PostOrderModel
from tests.mapping_schema import errors, validate


def fake_validator(kind: str, body: dict[str, Any]) -> str | None:
    """For `FakeOngoing(validator=...)`: check every write body the fake receives."""
    model = "PostArticleModel" if kind == "article" else "PostOrderModel"
    problems = errors(body, model)
    return f"{model}: {'; '.join(problems)}" if problems else None


# ---------------------------------------------------------------------------------------------------------------
# Typed body builders for tests. Every body they return has been validated.


def article_body(goods_owner_id: int, number: str, name: str | None = None, **extra: Any) -> PostArticleModel:
    body: PostArticleModel = {
        "goodsOwnerId": goods_owner_id,
        "articleNumber": number,
        "articleName": name if name is not None else f"Article {number}",
    }
    body.update(extra)  # type: ignore[typeddict-item]
    validate(body, "PostArticleModel")
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
    validate(body, "PostOrderModel")
    return body
