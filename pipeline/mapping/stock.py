"""Ongoing stock figure → PowerOffice `StockOnHand` (DESIGN §1, "stock balance").

The figure written back is the tenant's `stock_figure` from the article's `inventoryInfo`: `numberOfItems`
(physical stock, the default) or `sellableNumberOfItems` (what can still be sold; Ongoing lets it go negative,
and it is passed on as it is). PowerOffice accepts StockOnHand only on products with IsStockItem, so anything
else is skipped with a reason rather than sent to fail.

Stock goes back only once the warehouse has held the article (`warehouse_has_held`): before the goods first
arrive, Ongoing's zero says nothing about the customer's stock, and writing it would wipe PowerOffice's figure.
The projector applies that rule (it needs the article's earlier observations); a tenant may switch it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.config import TenantSettings
from pipeline.errors import MappingError
from pipeline.mapping import values


@dataclass(frozen=True, slots=True)
class StockMapping:
    """`PATCH /Products/{product_id}` setting StockOnHand to `value`."""

    product_id: int
    product_code: str
    value: float


def map_stock(
    inventory: Mapping[str, Any], product: Mapping[str, Any] | None, tenant: TenantSettings
) -> StockMapping | str:
    """The stock patch for one article, or the reason to skip it.

    `inventory` is the article's Ongoing `inventoryInfo`; `product` the PowerOffice product whose Code is the
    article number (None when there is none). Skips: the product is not in PowerOffice, has no usable Id or
    Code, is not a stock item, or the figure is missing or not a finite number. Total: never raises.
    """
    if product is None:
        return "product not in PowerOffice"
    figure_name = tenant.stock_figure
    try:
        p = values.obj(product, "product")
        product_id = values.integer(p, "Id", "Id")
        code = values.text(p, "Code", "Code")
        is_stock_item = values.flag(p, "IsStockItem", "IsStockItem")
        info = values.obj(inventory, "inventoryInfo")
        figure = values.number(info, figure_name, f"inventoryInfo.{figure_name}")
    except MappingError as exc:
        return f"unusable data: {exc}"
    if product_id is None or product_id <= 0:
        return "the PowerOffice product has no Id"
    if code is None:
        return "the PowerOffice product has no Code"
    if is_stock_item is not True:
        return f"product {values.shown(code)} is not a stock item in PowerOffice (IsStockItem is not true)"
    if figure is None:
        return f"Ongoing gave no {figure_name}"
    return StockMapping(product_id=product_id, product_code=code, value=float(figure))


def warehouse_has_held(inventory: Mapping[str, Any]) -> bool:
    """Whether this `inventoryInfo` shows the warehouse has held the article: a physical stock (`numberOfItems`)
    other than zero, or a `lastInDate` (goods came in at some time). A negative `sellableNumberOfItems` alone
    does not count: orders booked before any goods arrived make it so. Total: never raises."""
    if not isinstance(inventory, Mapping):
        return False
    try:
        figure = values.number(inventory, "numberOfItems", "inventoryInfo.numberOfItems")
    except MappingError:
        figure = None
    if figure is not None and figure != 0:
        return True
    last_in = inventory.get("lastInDate")
    return isinstance(last_in, str) and bool(last_in.strip())
