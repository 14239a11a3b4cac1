"""The pure comparisons of `pipeline.reconcile`, table by table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.config import Secret, TenantSettings, load_settings
from pipeline.errors import ConfigError
from pipeline.events import ArticleUpsertRequested, OrderUpsertRequested, StockPatchRequested
from pipeline.reconcile import (
    FieldDiff,
    compare_article,
    compare_order,
    compare_orders,
    compare_products,
    compare_stock,
    group_by_field,
    same,
    unmatched_orders,
    unobserved,
)

TENANT = TenantSettings("acme", Secret("k"), ongoing_goods_owner_id=7)


@pytest.mark.parametrize(
    ("ours", "theirs", "fold", "expected"),
    [
        (10, 10.0, False, True),
        (10.5, "10.5", False, True),
        (10.5, 10.6, False, False),
        ("A ", "A", False, True),
        ("St", "st", True, True),
        ("St", "st", False, False),
        (None, "", False, True),
        ("x", None, False, False),
        (True, True, False, True),
        (True, 1, False, False),
        (5, "five", False, False),
    ],
)
def test_same(ours: Any, theirs: Any, fold: bool, expected: bool) -> None:
    assert same(ours, theirs, fold_case=fold) is expected


BODY = {
    "goodsOwnerId": 7,
    "articleNumber": "A1",
    "articleName": "Widget",
    "customerPrice": 100.0,
    "barCodeInfo": {"barCode": "123"},
    "unitCode": "St",
    "articleGroup": {"code": "10", "name": "Tools"},
}
MODEL = {
    "articleSystemId": 1001,
    "articleNumber": "A1",
    "articleName": "Widget",
    "customerPrice": 100,
    "barCodeInfo": {"barCode": "123", "barCodePackage": None},
    "unitCode": "st",
    "articleGroup": {"code": "10", "name": "Tools"},
    "inventoryInfo": {"numberOfItems": 3.0},
    "description": "only in Ongoing: the mapping sends none, so not compared",
}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({}, []),
        ({"articleName": "Hand made"}, [FieldDiff("articleName", "Widget", "Hand made")]),
        ({"customerPrice": 99.5}, [FieldDiff("customerPrice", 100.0, 99.5)]),
        ({"barCodeInfo": None}, [FieldDiff("barCodeInfo.barCode", "123", None)]),
        (
            {"articleGroup": {"code": "20", "name": "Tools"}},
            [FieldDiff("articleGroup.code", "10", "20")],
        ),
        ({"unitCode": "ST"}, []),
    ],
)
def test_compare_article(change: dict[str, Any], expected: list[FieldDiff]) -> None:
    assert compare_article(BODY, MODEL | change) == expected


def test_compare_products_missing_different_and_only_in_ongoing() -> None:
    mapped = {
        "A1": ArticleUpsertRequested(BODY, 1),
        "A2": ArticleUpsertRequested(BODY | {"articleNumber": "A2"}, 2),
        "A3": ArticleUpsertRequested(BODY | {"articleNumber": "A3"}, 3),
    }
    articles = {"A1": MODEL, "A2": MODEL | {"articleNumber": "A2", "articleName": "X"}, "W1": {"articleNumber": "W1"}}
    result = compare_products(mapped, articles)
    got = [(d.issue, d.key, d.repair is not None, d.entity) for d in result.differences]
    assert got == [
        ("different", "A2", True, "article:A2"),
        ("missing", "A3", True, "article:A3"),
        ("only_in_ongoing", "W1", False, None),
    ]
    assert result.counts() == {
        "checked": 3,
        "agree": 1,
        "missing": 1,
        "different": 1,
        "only_in_ongoing": 1,
        "started": 0,
    }


ORDER_BODY: dict[str, Any] = {
    "goodsOwnerId": 7,
    "orderNumber": "1001",
    "goodsOwnerOrderId": "inv-1",
    "deliveryDate": "2026-11-20",
    "emailNotification": {"toBeNotified": True, "value": "a@b.no"},
    "consignee": {"name": "Kari", "address1": "Gate 1", "postCode": "0150", "countryCode": "NO"},
    "orderLines": [
        {"rowNumber": "1", "articleNumber": "A1", "numberOfItems": 2},
        {"rowNumber": "2", "articleNumber": "A2", "numberOfItems": 1, "comment": "gift"},
    ],
    "advanced": {"orderTextLines": [{"rowNumber": "3", "numberOfItems": 1, "comment": "Freight"}]},
}


def order_model(status: int = 200, **info: Any) -> dict[str, Any]:
    return {
        "orderInfo": {
            "orderId": 50001,
            "orderNumber": "1001",
            "goodsOwnerOrderId": "inv-1",
            "deliveryDate": "2026-11-20T00:00:00",
            "emailNotification": {"toBeNotified": True, "value": "a@b.no"},
            "orderStatus": {"number": status, "text": "x"},
        }
        | info,
        "consignee": {"id": 9, "name": "Kari", "address1": "Gate 1", "postCode": "0150", "countryCode": "NO"},
        "orderLines": [
            {"rowNumber": "1", "article": {"articleNumber": "A1"}, "orderedNumberOfItems": 2.0, "comment": None},
            {"rowNumber": "2", "article": {"articleNumber": "A2"}, "orderedNumberOfItems": 1.0, "comment": "gift"},
        ],
        "advanced": {"orderTextLines": [{"rowNumber": "3", "numberOfItems": 1, "comment": "Freight"}]},
    }


def test_compare_order_equal() -> None:
    assert compare_order(ORDER_BODY, order_model()) == []


def test_compare_order_header_consignee_lines_and_text_lines() -> None:
    model = order_model(deliveryDate="2026-12-01")
    model["consignee"]["city"] = "Oslo"  # not sent by us: not compared
    model["consignee"]["name"] = "Ola"
    model["orderLines"][0]["orderedNumberOfItems"] = 5
    del model["orderLines"][1]
    model["orderLines"].append({"rowNumber": "9", "article": {"articleNumber": "Z"}, "orderedNumberOfItems": 1})
    model["advanced"]["orderTextLines"] = []
    assert compare_order(ORDER_BODY, model) == [
        FieldDiff("deliveryDate", "2026-11-20", "2026-12-01"),
        FieldDiff("consignee.name", "Kari", "Ola"),
        FieldDiff("orderLines[1].numberOfItems", 2, 5),
        FieldDiff("orderLines[2]", "A2", None),
        FieldDiff("orderLines[9]", None, "Z"),
        FieldDiff("orderTextLines[3]", "Freight", None),
    ]


def test_compare_orders_missing_different_started_and_matched_by_goods_owner_order_id() -> None:
    def command(invoice: str, number: str) -> OrderUpsertRequested:
        return OrderUpsertRequested(ORDER_BODY | {"orderNumber": number, "goodsOwnerOrderId": invoice}, invoice)

    mapped = {
        "inv-1": command("inv-1", "1001"),
        "inv-2": command("inv-2", "1002"),
        "inv-3": command("inv-3", "1003"),
        "inv-4": command("inv-4", "1004"),
    }
    orders = [
        order_model(orderNumber="1001-renumbered"),  # matched by goodsOwnerOrderId inv-1; differs in number
        order_model(orderNumber="1003", goodsOwnerOrderId="inv-3", deliveryDate="2027-01-01"),
        order_model(status=300, orderNumber="1004", goodsOwnerOrderId="inv-4", deliveryDate="2027-01-01"),
    ]
    result = compare_orders(mapped, orders)
    got = [(d.issue, d.key, d.entity, d.repair is not None) for d in result.differences]
    assert got == [
        ("different", "1001", "order:inv-1", True),
        ("missing", "1002", "order:inv-2", True),
        ("different", "1003", "order:inv-3", True),
        ("started", "1004", "order:inv-4", False),
    ]
    repair = result.differences[1].repair
    assert isinstance(repair, OrderUpsertRequested)
    assert repair.force  # the sender sends an already delivered order again only when forced


def test_a_started_order_that_agrees_is_no_difference() -> None:
    mapped = {"inv-1": OrderUpsertRequested(ORDER_BODY, "inv-1")}
    assert compare_orders(mapped, [order_model(status=400)]).differences == []


def test_compare_stock_covers_stock_items_with_an_article_only() -> None:
    products = [
        {"Id": 1, "Code": "A1", "IsStockItem": True, "StockOnHand": 3.0},  # agrees
        {"Id": 2, "Code": "A2", "IsStockItem": True, "StockOnHand": 1.0},  # differs
        {"Id": 3, "Code": "A3", "IsStockItem": False, "StockOnHand": 0.0},  # not a stock item
        {"Id": 4, "Code": "A4", "IsStockItem": True, "StockOnHand": None},  # no article in Ongoing
        {"Id": 5, "Code": "A5", "IsStockItem": True, "StockOnHand": None},  # null on hand is 0
        {"Id": 6, "Code": "A6", "IsStockItem": True, "StockOnHand": 5.0},  # never held: PowerOffice's figure stands
    ]
    held = {"lastInDate": "2026-11-01T08:00:00Z"}
    articles = {
        code: {
            "articleNumber": code,
            "inventoryInfo": {"numberOfItems": n, "sellableNumberOfItems": n - 1, **(held if code != "A6" else {})},
        }
        for code, n in (("A1", 3.0), ("A2", 7.0), ("A3", 9.0), ("A5", 0.0), ("A6", 0.0))
    }
    result = compare_stock(products, articles, TENANT)
    assert result.checked == 3
    assert [(d.key, d.fields, d.entity) for d in result.differences] == [
        ("A2", (FieldDiff("StockOnHand", 1.0, 7.0),), "stockback:2")
    ]
    assert result.differences[0].repair == StockPatchRequested(2, "A2", 7.0)
    sellable = compare_stock(products, articles, TenantSettings("s", Secret("k"), stock_figure="sellableNumberOfItems"))
    assert sorted(d.key for d in sellable.differences) == ["A1", "A2", "A5"]


def test_group_by_field() -> None:
    mapped = {"A2": ArticleUpsertRequested(BODY | {"articleNumber": "A2"}, 2)}
    articles = {"A2": MODEL | {"articleNumber": "A2", "articleName": "X", "customerPrice": 1}, "W": {}}
    grouped = group_by_field(compare_products(mapped, articles).differences)
    assert grouped == {
        ("products", "articleName"): [("A2", "Widget", "X")],
        ("products", "customerPrice"): [("A2", 100.0, 1)],
        ("products", "only in Ongoing (left alone)"): [("W", None, None)],
    }


def test_config_reconcile_schedule_defaults_values_and_problems(tmp_path: Path) -> None:
    from tests.test_config import ENV, GOOD, write

    default = load_settings(write(tmp_path, GOOD), env=ENV)
    assert (default.reconcile_every_hours, default.reconcile_repair) == (24.0, False)
    chosen = load_settings(write(tmp_path, "reconcile_every_hours = 0\nreconcile_repair = true\n" + GOOD), env=ENV)
    assert (chosen.reconcile_every_hours, chosen.reconcile_repair) == (0.0, True)
    with pytest.raises(ConfigError) as bad:
        load_settings(write(tmp_path, 'reconcile_every_hours = -1\nreconcile_repair = "yes"\n' + GOOD), env=ENV)
    text = str(bad.value)
    assert "reconcile_every_hours" in text
    assert "reconcile_repair" in text


def test_unmatched_orders_by_goods_owner_order_id_or_number() -> None:
    def command(invoice: str, number: str) -> OrderUpsertRequested:
        return OrderUpsertRequested({"orderNumber": number, "goodsOwnerOrderId": invoice}, invoice)

    mapped = {"i1": command("i1", "1"), "i2": command("i2", "2"), "i3": command("i3", "3")}
    orders = [
        {"orderInfo": {"goodsOwnerOrderId": "i1", "orderNumber": "renumbered"}},
        {"orderInfo": {"goodsOwnerOrderId": None, "orderNumber": "2"}},
    ]
    assert [c.invoice_id for c in unmatched_orders(mapped, orders)] == ["i3"]


def test_unobserved_invoices_are_would_be_orders_the_log_holds_otherwise_or_not_at_all() -> None:
    from datetime import UTC, datetime

    from pipeline.eventlog.base import StoredEvent
    from pipeline.events import InvoiceObserved

    paid = {"Id": "a", "VoucherType": "OutgoingInvoice", "Balance": 0}
    unpaid = {"Id": "b", "VoucherType": "OutgoingInvoice", "Balance": 100}
    credit = {"Id": "c", "VoucherType": "OutgoingCreditNote", "Balance": 0}
    same_paid = {"Id": "d", "VoucherType": "OutgoingInvoice", "Balance": 0}
    newly_paid = {"Id": "e", "VoucherType": "OutgoingInvoice", "Balance": 0}

    def stored(invoice: dict[str, Any]) -> StoredEvent:
        event = InvoiceObserved(invoice=invoice, lines=[])
        when = datetime(2026, 11, 1, tzinfo=UTC)
        return StoredEvent(1, when, "acme", f"invoice:{invoice['Id']}", event.TYPE, 1, event, None, None, "k")

    latest = {"invoice:d": stored(same_paid), "invoice:e": stored(newly_paid | {"Balance": 100})}
    live = [paid, unpaid, credit, same_paid, newly_paid]
    assert [i["Id"] for i in unobserved(live, latest, TENANT)] == ["a", "e"]
