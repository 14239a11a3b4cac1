"""Product → article: one case per row of DESIGN §4's product table, the product filters, and the errors."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pipeline.errors import MappingError
from pipeline.mapping import ArticleMapping, map_product, product_excluded
from tests.mapping_schema import find, tenant, validate

PRODUCTS = "poweroffice/products.json"
GROUPS = "poweroffice/product_groups.json"
ABSENT = object()
OWN_GROUP = "own group"


def product(code: str, **changes: Any) -> dict[str, Any]:
    record = find(PRODUCTS, "Code", code)
    record.update(changes)
    return record


def group_of(record: dict[str, Any]) -> dict[str, Any] | None:
    group_id = record.get("ProductGroupId")
    return None if group_id is None else find(GROUPS, "Id", group_id)


def mapped(record: dict[str, Any], group: Any = OWN_GROUP, **settings: Any) -> ArticleMapping:
    """map_product with the product's own group (unless given), checked against the Ongoing schema."""
    result = map_product(record, group_of(record) if group is OWN_GROUP else group, tenant(**settings))
    validate(result.body, "PostArticleModel")
    return result


@pytest.mark.parametrize(
    ("code", "changes", "group", "key", "expected"),
    [
        pytest.param("BA-12", {}, OWN_GROUP, "goodsOwnerId", 42, id="article-goods-owner-from-tenant"),
        pytest.param("BA-12", {}, OWN_GROUP, "articleNumber", "BA-12", id="article-number-from-code"),
        pytest.param(
            "BA-12", {"Code": "  BA-12\t"}, OWN_GROUP, "articleNumber", "BA-12", id="article-number-code-stripped"
        ),
        pytest.param("BA-12", {}, OWN_GROUP, "articleName", "Big blue box", id="article-name-from-name"),
        pytest.param("BA-12", {"Name": None}, OWN_GROUP, "articleName", ABSENT, id="article-name-omitted-when-null"),
        pytest.param("BA-12", {}, OWN_GROUP, "customerPrice", 100.5, id="article-customer-price-from-unit-price"),
        pytest.param("NP-3", {}, OWN_GROUP, "customerPrice", 100.12, id="article-customer-price-inherited-from-group"),
        pytest.param("NP-3", {}, None, "customerPrice", ABSENT, id="article-customer-price-omitted-without-any"),
        pytest.param(
            "LOOSE-9", {}, OWN_GROUP, "customerPrice", 20, id="article-customer-price-rounded-to-two-decimals"
        ),
        pytest.param(
            "BA-12", {"UnitPrice": 0.125}, OWN_GROUP, "customerPrice", 0.13, id="article-price-rounds-half-up"
        ),
        pytest.param(
            "BA-12", {"UnitPrice": "100.50"}, OWN_GROUP, "customerPrice", 100.5, id="article-price-from-numeric-text"
        ),
        pytest.param("BA-12", {}, OWN_GROUP, "purchasePrice", 200.57, id="article-purchase-price-from-unit-cost"),
        pytest.param("NP-3", {}, OWN_GROUP, "purchasePrice", 69.42, id="article-purchase-price-inherited-from-group"),
        pytest.param(
            "BA-12", {}, OWN_GROUP, "barCodeInfo", {"barCode": "00012345678905"}, id="article-barcode-from-gtin"
        ),
        pytest.param("BA-12", {"Gtin": None}, OWN_GROUP, "barCodeInfo", ABSENT, id="article-barcode-omitted-no-gtin"),
        pytest.param("BA-12", {"Gtin": "  "}, OWN_GROUP, "barCodeInfo", ABSENT, id="article-barcode-omitted-blank"),
        pytest.param(
            "BA-12",
            {},
            OWN_GROUP,
            "description",
            "Bottomless box of mysteries",
            id="article-description-from-description",
        ),
        pytest.param("LOOSE-9", {}, None, "description", ABSENT, id="article-description-omitted-when-null"),
        pytest.param("BA-12", {}, OWN_GROUP, "unitCode", "BX", id="article-unit-code-from-unit-of-measure-code"),
        pytest.param("LOOSE-9", {}, None, "unitCode", "KGM", id="article-unit-code-kilogram"),
        pytest.param(
            "BA-12",
            {},
            OWN_GROUP,
            "articleGroup",
            {"code": "BA12", "name": "Big blue boxes"},
            id="article-group-from-product-group",
        ),
        pytest.param(
            "BA-12", {}, None, "articleGroup", {"code": "BA12"}, id="article-group-code-only-without-group-snapshot"
        ),
        pytest.param("LOOSE-9", {}, None, "articleGroup", ABSENT, id="article-group-omitted-without-group"),
        pytest.param("OLD-1", {}, OWN_GROUP, "articleNumber", "OLD-1", id="article-archived-product-still-mapped"),
        pytest.param(
            "BA-12",
            {"Name": "Blå eske 📦 «ærlig»"},
            OWN_GROUP,
            "articleName",
            "Blå eske 📦 «ærlig»",
            id="article-unicode",
        ),
    ],
)
def test_product_row(code: str, changes: dict[str, Any], group: Any, key: str, expected: Any) -> None:
    """Each DESIGN §4 product row fills its REST field from its v2 field (or leaves it out when unset)."""
    body = mapped(product(code, **changes), group).body
    assert body.get(key, ABSENT) == expected


def test_product_full_body_has_only_mapped_fields() -> None:
    """A full product maps to exactly the seed's fields: nothing unmapped (IsStockItem, IsArchived) slips in."""
    result = mapped(product("BA-12"))
    assert result.body == {
        "goodsOwnerId": 42,
        "articleNumber": "BA-12",
        "articleName": "Big blue box",
        "customerPrice": 100.5,
        "purchasePrice": 200.57,
        "barCodeInfo": {"barCode": "00012345678905"},
        "description": "Bottomless box of mysteries",
        "unitCode": "BX",
        "articleGroup": {"code": "BA12", "name": "Big blue boxes"},
    }
    assert result.warnings == ()


def test_product_without_name_warns() -> None:
    """A product without a Name is still an article, and the log gets a warning naming it."""
    result = mapped(product("BA-12", Name="   "))
    assert "articleName" not in result.body
    assert len(result.warnings) == 1
    assert "BA-12" in result.warnings[0]


def test_product_null_is_never_sent() -> None:
    """Null v2 fields are omitted from the body, never sent as null (which could clear a value in Ongoing)."""
    nulls = {"Name": None, "Description": None, "Gtin": None, "UnitPrice": None, "UnitCost": None}
    body = mapped(product("LOOSE-9", UnitOfMeasureCode=None, **nulls), None).body
    assert body == {"goodsOwnerId": 42, "articleNumber": "LOOSE-9"}


@pytest.mark.parametrize(
    ("changes", "group", "field"),
    [
        pytest.param({"Code": None}, OWN_GROUP, "Code", id="article-error-no-code"),
        pytest.param({"Code": "   "}, OWN_GROUP, "Code", id="article-error-blank-code"),
        pytest.param({"Code": ["BA-12"]}, OWN_GROUP, "Code", id="article-error-code-not-text"),
        pytest.param({"UnitPrice": math.nan}, OWN_GROUP, "UnitPrice", id="article-error-price-nan"),
        pytest.param({"UnitPrice": math.inf}, OWN_GROUP, "UnitPrice", id="article-error-price-infinite"),
        pytest.param({"UnitPrice": "12,50 kr"}, OWN_GROUP, "UnitPrice", id="article-error-price-not-a-number"),
        pytest.param({"UnitPrice": True}, OWN_GROUP, "UnitPrice", id="article-error-price-boolean"),
        pytest.param({"UnitPrice": 1e16}, OWN_GROUP, "UnitPrice", id="article-error-price-out-of-range"),
        pytest.param({"UnitCost": -math.inf}, OWN_GROUP, "UnitCost", id="article-error-cost-infinite"),
        pytest.param(
            {"UnitPrice": None},
            {"Id": 1234, "UnitPrice": math.nan},
            "group.UnitPrice",
            id="article-error-group-price-nan",
        ),
        pytest.param({}, {"Id": 999, "Code": "X"}, "ProductGroupId", id="article-error-group-snapshot-mismatch"),
        pytest.param({"Gtin": {"value": "1"}}, OWN_GROUP, "Gtin", id="article-error-gtin-not-text"),
    ],
)
def test_product_error(changes: dict[str, Any], group: Any, field: str) -> None:
    """A product that cannot become an article raises MappingError naming the v2 field."""
    record = product("BA-12", **changes)
    with pytest.raises(MappingError) as caught:
        map_product(record, group_of(record) if group is OWN_GROUP else group, tenant())
    assert caught.value.field == field
    assert caught.value.reason


def test_product_not_an_object() -> None:
    """A product that is not a JSON object is a MappingError, not a crash."""
    with pytest.raises(MappingError) as caught:
        map_product(["BA-12"], None, tenant())  # type: ignore[arg-type]
    assert caught.value.field == "product"


@pytest.mark.parametrize(
    ("code", "changes", "group", "settings", "reason"),
    [
        pytest.param("SVC-INSTALL", {}, OWN_GROUP, {}, None, id="filter-default-includes-services"),
        pytest.param("GR-7", {}, OWN_GROUP, {}, None, id="filter-default-includes-non-stock-items"),
        pytest.param("OLD-1", {}, OWN_GROUP, {}, None, id="filter-default-includes-archived"),
        pytest.param("LOOSE-9", {}, None, {}, None, id="filter-default-includes-products-without-group"),
        pytest.param("BA-12", {}, OWN_GROUP, {"product_group_codes": ("BA12",)}, None, id="filter-group-codes-include"),
        pytest.param(
            "BA-12", {}, OWN_GROUP, {"product_group_codes": ("ba12",)}, None, id="filter-group-codes-ignore-case"
        ),
        pytest.param("BA-12", {}, None, {"product_group_codes": ("BA12",)}, None, id="filter-group-code-from-product"),
        pytest.param(
            "SVC-INSTALL",
            {},
            OWN_GROUP,
            {"product_group_codes": ("BA12",)},
            "product group 'SRV' is not one of the tenant's groups (BA12)",
            id="filter-group-codes-exclude",
        ),
        pytest.param(
            "LOOSE-9",
            {},
            None,
            {"product_group_codes": ("BA12", "SRV")},
            "no product group, and the tenant syncs only groups BA12, SRV",
            id="filter-group-codes-exclude-without-group",
        ),
        pytest.param("BA-12", {}, OWN_GROUP, {"stock_items_only": True}, None, id="filter-stock-items-only-include"),
        pytest.param(
            "GR-7",
            {},
            OWN_GROUP,
            {"stock_items_only": True},
            "not a stock item (IsStockItem is not true), and the tenant syncs stock items only",
            id="filter-stock-items-only-exclude",
        ),
        pytest.param(
            "BA-12",
            {"IsStockItem": None},
            OWN_GROUP,
            {"stock_items_only": True},
            "not a stock item (IsStockItem is not true), and the tenant syncs stock items only",
            id="filter-stock-items-only-exclude-unknown",
        ),
        pytest.param(
            "SVC-INSTALL",
            {},
            OWN_GROUP,
            {"skip_services": True},
            "a service (ProductType Service), and the tenant skips services",
            id="filter-skip-services-exclude",
        ),
        pytest.param(
            "SVC-INSTALL",
            {"ProductType": None},
            OWN_GROUP,
            {"skip_services": True},
            "a service (ProductType Service), and the tenant skips services",
            id="filter-skip-services-type-from-group",
        ),
        pytest.param("GR-7", {}, OWN_GROUP, {"skip_services": True}, None, id="filter-skip-services-keeps-products"),
    ],
)
def test_product_filter(
    code: str, changes: dict[str, Any], group: Any, settings: dict[str, Any], reason: str | None
) -> None:
    """The tenant's product filters (seed `*`) include or exclude a product, saying why."""
    record = product(code, **changes)
    chosen = group_of(record) if group is OWN_GROUP else group
    assert product_excluded(record, chosen, tenant(**settings)) == reason
