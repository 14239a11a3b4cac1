"""Ongoing stock → PowerOffice StockOnHand: the stock figure setting and every skip reason."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pipeline.mapping import StockMapping, map_stock
from tests.mapping_schema import find, tenant

ARTICLES = "ongoing/articles.json"
PRODUCTS = "poweroffice/products.json"


def inventory(article_number: str, **changes: Any) -> dict[str, Any]:
    info: dict[str, Any] = find(ARTICLES, "articleNumber", article_number)["inventoryInfo"]
    info.update(changes)
    return info


def product(code: str, **changes: Any) -> dict[str, Any]:
    record = find(PRODUCTS, "Code", code)
    record.update(changes)
    return record


@pytest.mark.parametrize(
    ("info", "record", "settings", "expected"),
    [
        pytest.param(
            inventory("BA-12"),
            product("BA-12"),
            {},
            StockMapping(product_id=1610, product_code="BA-12", value=40.0),
            id="stock-number-of-items-by-default",
        ),
        pytest.param(
            inventory("BA-12"),
            product("BA-12"),
            {"stock_figure": "sellableNumberOfItems"},
            StockMapping(product_id=1610, product_code="BA-12", value=28.0),
            id="stock-sellable-number-of-items-setting",
        ),
        pytest.param(
            inventory("OLD-1"),
            product("OLD-1"),
            {"stock_figure": "sellableNumberOfItems"},
            StockMapping(product_id=1613, product_code="OLD-1", value=-2.0),
            id="stock-sellable-may-be-negative",
        ),
        pytest.param(
            inventory("BA-12", numberOfItems="12.5"),
            product("BA-12"),
            {},
            StockMapping(product_id=1610, product_code="BA-12", value=12.5),
            id="stock-figure-as-numeric-text",
        ),
        pytest.param(
            inventory("WH-ONLY"), None, {}, "product not in PowerOffice", id="stock-skip-product-not-in-poweroffice"
        ),
        pytest.param(
            inventory("GR-7"),
            product("GR-7"),
            {},
            "product 'GR-7' is not a stock item in PowerOffice (IsStockItem is not true)",
            id="stock-skip-not-a-stock-item",
        ),
        pytest.param(
            {k: v for k, v in inventory("BA-12").items() if k != "numberOfItems"},
            product("BA-12"),
            {},
            "Ongoing gave no numberOfItems",
            id="stock-skip-figure-missing",
        ),
        pytest.param(
            inventory("BA-12", sellableNumberOfItems=None),
            product("BA-12"),
            {"stock_figure": "sellableNumberOfItems"},
            "Ongoing gave no sellableNumberOfItems",
            id="stock-skip-chosen-figure-null",
        ),
        pytest.param(
            inventory("BA-12"),
            product("BA-12", Id=None),
            {},
            "the PowerOffice product has no Id",
            id="stock-skip-product-without-id",
        ),
        pytest.param(
            inventory("BA-12"),
            product("BA-12", Code=" "),
            {},
            "the PowerOffice product has no Code",
            id="stock-skip-product-without-code",
        ),
    ],
)
def test_stock(info: dict[str, Any], record: dict[str, Any] | None, settings: dict[str, Any], expected: Any) -> None:
    """The tenant's stock figure goes back as StockOnHand for stock items; anything else is skipped, saying why."""
    assert map_stock(info, record, tenant(**settings)) == expected


@pytest.mark.parametrize(
    ("info", "record", "field"),
    [
        pytest.param(inventory("BA-12", numberOfItems=math.nan), product("BA-12"), "numberOfItems", id="stock-nan"),
        pytest.param(inventory("BA-12", numberOfItems=True), product("BA-12"), "numberOfItems", id="stock-boolean"),
        pytest.param(inventory("BA-12"), product("BA-12", IsStockItem="yes"), "IsStockItem", id="stock-bad-flag"),
        pytest.param("40", product("BA-12"), "inventoryInfo", id="stock-inventory-not-an-object"),
    ],
)
def test_stock_skips_unusable_data(info: Any, record: dict[str, Any], field: str) -> None:
    """Unusable figures or flags are skipped with a reason naming the field, never raised."""
    reason = map_stock(info, record, tenant())
    assert isinstance(reason, str)
    assert reason.startswith("unusable data:")
    assert field in reason
