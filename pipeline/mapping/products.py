"""PowerOffice product → Ongoing article upsert body (DESIGN §4, "Product → article").

| v2 source (ProductDto)                     | PostArticleModel                            |
|--------------------------------------------|---------------------------------------------|
| tenant                                     | goodsOwnerId                                |
| Code (stripped; required)                  | articleNumber                               |
| Name                                       | articleName                                 |
| UnitPrice, else the group's UnitPrice      | customerPrice                               |
| UnitCost, else the group's UnitCost        | purchasePrice                               |
| Gtin                                       | barCodeInfo.barCode                         |
| Description                                | description                                 |
| UnitOfMeasureCode                          | unitCode                                    |
| group Code/Name (else ProductGroupCode)    | articleGroup {code, name}                   |

Null and empty values are **omitted, never sent as null**. What Ongoing's upsert does with an explicit null is
not documented: it may clear the value. A null in PowerOffice often does not mean "empty" either (a null
UnitPrice means "inherit the group's price"; a missing group snapshot means "not fetched"), so sending null
could wipe good warehouse data for no reason. The price of this choice: a value *removed* in PowerOffice (a Gtin
deleted, say) stays in Ongoing until someone clears it there. The same rule holds for orders.

Prices fall back to the product group's because PowerOffice documents exactly that inheritance for a null
UnitPrice/UnitCost: it is the product's effective price, not a new field.

Fields outside the seed's mapping (IsStockItem → isStockArticle, IsArchived → isActive, ...) are not sent.

Archived products (IsArchived) are mapped like any other. The seed syncs "all products" by default, and an
archived product can still sit on an invoice that is paid later: leaving it out of the article registry would
turn that line into a text line and the goods would not be picked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import TenantSettings
from pipeline.errors import MappingError
from pipeline.mapping import values
from pipeline.mapping.values import Json

SERVICE = "Service"  # ProductType enum of the v2 spec: Product | Service


@dataclass(frozen=True, slots=True)
class ArticleMapping:
    """A PostArticleModel body and the warnings worth logging about how it was made."""

    body: dict[str, Any]
    warnings: tuple[str, ...] = ()


def map_product(product: Mapping[str, Any], group: Mapping[str, Any] | None, tenant: TenantSettings) -> ArticleMapping:
    """Map a ProductDto (and its ProductGroupDto, None when it has none) to a `PUT /articles` body.

    Raises MappingError naming the v2 field when the product cannot become an article: no Code, a price that is
    not a finite number, a field of the wrong JSON type, or a group snapshot that is not the product's group.
    Never raises anything else.
    """
    p = values.obj(product, "product")
    g = None if group is None else values.obj(group, "group")
    code = values.text(p, "Code", "Code")
    if code is None:
        raise MappingError("Code", "the product has no Code, and Ongoing needs it as the article number")
    _check_group(p, g)

    warnings: list[str] = []
    body: dict[str, Any] = {"goodsOwnerId": tenant.ongoing_goods_owner_id, "articleNumber": code}
    name = values.text(p, "Name", "Name")
    if name is not None:
        body["articleName"] = name
    else:
        warnings.append(f"product {code!r} has no Name: the article is sent without a name")
    price = values.money(p, "UnitPrice", "UnitPrice")
    if price is None and g is not None:
        price = values.money(g, "UnitPrice", "group.UnitPrice")
    if price is not None:
        body["customerPrice"] = price
    cost = values.money(p, "UnitCost", "UnitCost")
    if cost is None and g is not None:
        cost = values.money(g, "UnitCost", "group.UnitCost")
    if cost is not None:
        body["purchasePrice"] = cost
    gtin = values.text(p, "Gtin", "Gtin")
    if gtin is not None:
        body["barCodeInfo"] = {"barCode": gtin}
    description = values.text(p, "Description", "Description")
    if description is not None:
        body["description"] = description
    unit = values.text(p, "UnitOfMeasureCode", "UnitOfMeasureCode")
    if unit is not None:
        body["unitCode"] = unit
    article_group = _article_group(p, g)
    if article_group:
        body["articleGroup"] = article_group
    return ArticleMapping(body=body, warnings=tuple(warnings))


def product_excluded(product: Mapping[str, Any], group: Mapping[str, Any] | None, tenant: TenantSettings) -> str | None:
    """The reason the tenant's product filters leave this product out, or None when it is included.

    Filters (all off by default, so every product is synced, archived ones included): `product_group_codes`
    (the group's Code, else the product's ProductGroupCode; compared without case), `stock_items_only`
    (IsStockItem must be true) and `skip_services` (ProductType "Service", the product's own, else its group's).
    Raises MappingError only when a field it reads has the wrong JSON type.
    """
    p = values.obj(product, "product")
    g = None if group is None else values.obj(group, "group")
    if tenant.product_group_codes:
        wanted = {c.strip().casefold() for c in tenant.product_group_codes}
        listed = ", ".join(tenant.product_group_codes)
        code = _group_code(p, g)
        if code is None:
            return f"no product group, and the tenant syncs only groups {listed}"
        if code.casefold() not in wanted:
            return f"product group {code!r} is not one of the tenant's groups ({listed})"
    if tenant.stock_items_only and values.flag(p, "IsStockItem", "IsStockItem") is not True:
        return "not a stock item (IsStockItem is not true), and the tenant syncs stock items only"
    if tenant.skip_services and _product_type(p, g) == SERVICE:
        return "a service (ProductType Service), and the tenant skips services"
    return None


def _check_group(p: Json, g: Json | None) -> None:
    if g is None:
        return
    wanted = values.integer(p, "ProductGroupId", "ProductGroupId")
    got = values.integer(g, "Id", "group.Id")
    if wanted is not None and got is not None and wanted != got:
        raise MappingError(
            "ProductGroupId", f"the product is in group {wanted}, but the observation carries group {got}"
        )


def _group_code(p: Json, g: Json | None) -> str | None:
    code = values.text(g, "Code", "group.Code") if g is not None else None
    return code if code is not None else values.text(p, "ProductGroupCode", "ProductGroupCode")


def _article_group(p: Json, g: Json | None) -> dict[str, str]:
    """{code, name} of the product's group: from the group snapshot, else the code the product carries."""
    out: dict[str, str] = {}
    code = _group_code(p, g)
    if code is not None:
        out["code"] = code
    name = values.text(g, "Name", "group.Name") if g is not None else None
    if name is not None:
        out["name"] = name
    return out


def _product_type(p: Json, g: Json | None) -> str | None:
    kind = values.text(p, "ProductType", "ProductType")
    if kind is None and g is not None:
        kind = values.text(g, "ProductType", "group.ProductType")
    return kind
