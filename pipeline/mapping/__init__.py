"""The pure mapping: PowerOffice observations → Ongoing bodies, Ongoing stock → PowerOffice patches.

No clock and no I/O: everything a mapping needs comes in as arguments ("today" is the observation's date), so
a replay gives the same answer as the first run. Every function is total over garbage JSON: it returns, or it
raises `pipeline.errors.MappingError` naming the source field, never anything else.

`MAPPING_VERSION` is recorded on every command. Bump it whenever the output of any mapping changes for some
input, so a replay can tell which commands an older mapping made.
"""

from __future__ import annotations

from pipeline.mapping.orders import (
    NothingToShip,
    OrderMapping,
    fallback_order_number,
    invoice_wants_order,
    map_invoice,
    order_number_for,
)
from pipeline.mapping.products import ArticleMapping, map_product, product_excluded
from pipeline.mapping.stock import StockMapping, map_stock

MAPPING_VERSION: int = 2  # 2: a product line is never a text line (rule 9)

__all__ = [
    "MAPPING_VERSION",
    "ArticleMapping",
    "NothingToShip",
    "OrderMapping",
    "StockMapping",
    "fallback_order_number",
    "invoice_wants_order",
    "map_invoice",
    "map_product",
    "map_stock",
    "order_number_for",
    "product_excluded",
]
