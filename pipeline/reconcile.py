"""Reconcile: do PowerOffice and Ongoing agree, and if not, where?

The log says what the pipeline did; it cannot say what the warehouse holds now (an article edited by hand, a write
lost without an answer saying so, a goods owner onboarded with years of articles already in the WMS). Reconcile
reads both sides and compares them, per tenant and kind:

- **products**: every PowerOffice product, mapped with the current mapping (the tenant's filters apply), against
  every Ongoing article of the goods owner (paged by `articleSystemIdFrom`), field by field. Reports articles
  missing in Ongoing, articles that differ (each field: the mapped PowerOffice value, Ongoing's value) and
  articles only in Ongoing (reported, never changed or deleted).
- **orders**: every invoice the mapping turns into an order (the newest observation of each invoice in the log,
  balance changed since the tenant's `orders_since` or `--since`), against Ongoing's orders matched by
  `goodsOwnerOrderId` (Ongoing cannot filter on it, so the goods owner's orders created since then are read in
  pages). Reports missing orders, different header fields and lines, and differing orders the warehouse has
  started (reported, never touched).
- **stock**: Ongoing's figure (the tenant's `stock_figure`) against PowerOffice's `StockOnHand`, for the products
  the stock write-back covers (`map_stock`: stock items with a matching article).

The comparison functions (`compare_*`) are pure; only `fetch_*` and `reconcile` do I/O. Every run appends one
`reconcile.recorded` per tenant (who, window, counts, mapping version, whether the systems agreed, the request
count), so `audit` shows when they last agreed. With `repair`, the commands that bring Ongoing (and PowerOffice's
stock) in line are appended with the record as their causation; the senders deliver them in the next cycle. An
article only in Ongoing and an order the warehouse has started are never repaired.
"""

from __future__ import annotations

import getpass
import math
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import aiohttp
import anyio
import orjson
from rich.console import Console
from rich.table import Table

from pipeline.clients.ongoing import WAREHOUSE_STARTED_STATUS, TenantOngoing, order_status
from pipeline.clients.poweroffice import TenantPowerOffice, parse_timestamp
from pipeline.config import Settings, TenantSettings
from pipeline.errors import ApiError, MappingError, PermanentApiError
from pipeline.eventlog import open_log
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import (
    ArticleUpsertRequested,
    Event,
    InvoiceObserved,
    OrderUpsertRequested,
    ReconcileRecorded,
    StockPatchRequested,
    to_dict,
)
from pipeline.mapping import MAPPING_VERSION, invoice_wants_order, map_product, map_stock, product_excluded
from pipeline.mapping.stock import warehouse_has_held
from pipeline.pollers.poweroffice import dedupe_key as poller_dedupe_key
from pipeline.projectors.commands import Command, Projection, project_event

Kind = Literal["products", "orders", "stock"]
KINDS: tuple[Kind, ...] = ("products", "orders", "stock")
Issue = Literal["missing", "different", "only_in_ongoing", "started"]
ISSUES: tuple[Issue, ...] = ("missing", "different", "only_in_ongoing", "started")
# Ongoing's orders are read from this long before the window starts: the two clocks may differ.
ORDER_CLOCK_MARGIN = timedelta(days=1)
# Money and quantities are equal when they differ by less than this (JSON numbers through two systems).
TOLERANCE = 1e-6


@dataclass(frozen=True, slots=True)
class FieldDiff:
    field: str
    poweroffice: Any  # the value the mapping makes from PowerOffice (for stock: PowerOffice's StockOnHand)
    ongoing: Any


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that does not agree. `key` is the article number, order number or product code."""

    kind: Kind
    key: str
    issue: Issue
    fields: tuple[FieldDiff, ...] = ()
    # The command that would bring the target in line (None when it must not be repaired).
    repair: Event | None = None
    entity: str | None = None
    # The repair's dedupe key when it is not reconcile's own (an observation gets the poller's key).
    dedupe_key: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "issue": self.issue,
            "fields": [{"field": f.field, "poweroffice": f.poweroffice, "ongoing": f.ongoing} for f in self.fields],
            "repairable": self.repair is not None,
        }


@dataclass
class KindResult:
    kind: Kind
    checked: int = 0
    differences: list[Difference] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {"checked": self.checked, "agree": self.checked - self._counted()}
        for issue in ISSUES:
            out[issue] = sum(1 for d in self.differences if d.issue == issue)
        return out

    def _counted(self) -> int:  # differences among the checked entities (only_in_ongoing were not "checked")
        return sum(1 for d in self.differences if d.issue != "only_in_ongoing")


@dataclass
class TenantResult:
    tenant: str
    kinds: dict[str, KindResult] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    appended: int = 0
    record_position: int | None = None
    error: str | None = None

    @property
    def differences(self) -> list[Difference]:
        return [d for k in self.kinds.values() for d in k.differences]

    @property
    def agreed(self) -> bool:
        return self.error is None and not self.differences


@dataclass
class ReconcileReport:
    started: datetime
    repair: bool
    window_from: datetime | None
    tenants: dict[str, TenantResult] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def agreed(self) -> bool:
        return all(t.agreed for t in self.tenants.values())

    @property
    def exit_code(self) -> int:
        return 0 if self.agreed else 1

    def requests(self) -> dict[str, int]:
        total: dict[str, int] = defaultdict(int)
        for t in self.tenants.values():
            for side, n in t.requests.items():
                total[side] += n
        return dict(total)

    def as_json(self) -> dict[str, Any]:
        return {
            "started": self.started.isoformat(),
            "repair": self.repair,
            "window_from": self.window_from.isoformat() if self.window_from else None,
            "agreed": self.agreed,
            "requests": self.requests(),
            "seconds": round(self.seconds, 3),
            "tenants": {
                name: {
                    "agreed": t.agreed,
                    "error": t.error,
                    "counts": {k: r.counts() for k, r in t.kinds.items()},
                    "requests": t.requests,
                    "appended": t.appended,
                    "record": t.record_position,
                    "differences": [d.as_json() for d in t.differences],
                }
                for name, t in self.tenants.items()
            },
        }


# ---------------------------------------------------------------------------------------------------------------
# Pure comparison


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{path}.{key}" if path else str(key))
    else:
        yield path, value


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def same(ours: Any, theirs: Any, *, fold_case: bool = False) -> bool:
    """Whether two leaf values mean the same: numbers within TOLERANCE (also a number sent as text), text without
    surrounding blanks (case folded when asked), and null equal to empty text."""
    if isinstance(ours, bool) or isinstance(theirs, bool):
        return ours is theirs
    if isinstance(ours, int | float) and isinstance(theirs, int | float | str):
        try:
            return math.isclose(float(ours), float(theirs), rel_tol=0, abs_tol=TOLERANCE)
        except ValueError:
            return False
    if isinstance(ours, str) or isinstance(theirs, str):
        a = (ours or "").strip() if isinstance(ours, str) or ours is None else ours
        b = (theirs or "").strip() if isinstance(theirs, str) or theirs is None else theirs
        if fold_case and isinstance(a, str) and isinstance(b, str):
            return a.casefold() == b.casefold()
        return bool(a == b)
    return bool(ours == theirs)


# Ongoing lower-cases some codes it stores (NOTES: "St" comes back as "st").
_FOLDED = {"unitCode"}
_ARTICLE_KEYS = {"goodsOwnerId", "articleNumber"}


def compare_article(body: Mapping[str, Any], article: Mapping[str, Any]) -> list[FieldDiff]:
    """The fields where an Ongoing GetArticleModel differs from the mapped PostArticleModel `body`.

    Only fields the mapping sends are compared: it never sends a null, so a value removed in PowerOffice is not a
    difference (the mapping would not clear it either)."""
    out = []
    for path, ours in _leaves({k: v for k, v in body.items() if k not in _ARTICLE_KEYS}):
        theirs = _at(article, path)
        if not same(ours, theirs, fold_case=path in _FOLDED):
            out.append(FieldDiff(path, ours, theirs))
    return out


def compare_products(
    mapped: Mapping[str, ArticleUpsertRequested],
    articles: Mapping[str, Mapping[str, Any]],
    *,
    only_in_ongoing: bool = True,
) -> KindResult:
    """Mapped products (article number → its command) against Ongoing's articles (article number → model).
    `only_in_ongoing=False` leaves out the articles without a product (for comparing one page at a time)."""
    result = KindResult("products", checked=len(mapped))
    for number in sorted(mapped):
        command = mapped[number]
        entity = f"article:{number}"
        article = articles.get(number)
        if article is None:
            result.differences.append(Difference("products", number, "missing", (), command, entity))
            continue
        fields = compare_article(command.body, article)
        if fields:
            result.differences.append(Difference("products", number, "different", tuple(fields), command, entity))
    if only_in_ongoing:
        for number in sorted(set(articles) - set(mapped)):
            result.differences.append(Difference("products", number, "only_in_ongoing"))
    return result


_ORDER_SKIP = {"goodsOwnerId", "orderLines", "consignee", "advanced"}


def compare_order(body: Mapping[str, Any], order: Mapping[str, Any]) -> list[FieldDiff]:
    """The fields where an Ongoing GetOrderModel differs from the mapped PostOrderModel `body`: header fields
    (`orderInfo`), the consignee, order lines by row number (article, quantity, comment) and text lines."""
    out: list[FieldDiff] = []
    info = order.get("orderInfo") or {}
    for path, ours in _leaves({k: v for k, v in body.items() if k not in _ORDER_SKIP}):
        theirs = _at(info, path)
        if path == "deliveryDate" and isinstance(theirs, str):
            theirs = theirs[:10]  # the GET may carry a time of day
        if not same(ours, theirs):
            out.append(FieldDiff(path, ours, theirs))
    consignee = order.get("consignee") or {}
    for path, ours in _leaves(body.get("consignee") or {}):
        theirs = _at(consignee, path)
        if not same(ours, theirs):
            out.append(FieldDiff(f"consignee.{path}", ours, theirs))
    theirs_lines = {str(line.get("rowNumber")): line for line in order.get("orderLines") or [] if line}
    ours_lines = {str(line.get("rowNumber")): line for line in body.get("orderLines") or [] if line}
    for row in sorted(set(ours_lines) | set(theirs_lines)):
        mine, other = ours_lines.get(row), theirs_lines.get(row)
        if mine is None or other is None:
            shown_mine = mine.get("articleNumber") if mine else None
            shown_other = (other.get("article") or {}).get("articleNumber") if other else None
            out.append(FieldDiff(f"orderLines[{row}]", shown_mine, shown_other))
            continue
        pairs = (
            ("articleNumber", mine.get("articleNumber"), (other.get("article") or {}).get("articleNumber")),
            ("numberOfItems", mine.get("numberOfItems"), other.get("orderedNumberOfItems")),
            ("comment", mine.get("comment"), other.get("comment")),
        )
        for name, a, b in pairs:
            if not same(a, b):
                out.append(FieldDiff(f"orderLines[{row}].{name}", a, b))
    ours_text = {
        str(t.get("rowNumber")): t.get("comment") for t in (body.get("advanced") or {}).get("orderTextLines") or []
    }
    theirs_text = {
        str(t.get("rowNumber")): t.get("comment") for t in (order.get("advanced") or {}).get("orderTextLines") or []
    }
    for row in sorted(set(ours_text) | set(theirs_text)):
        if not same(ours_text.get(row), theirs_text.get(row)):
            out.append(FieldDiff(f"orderTextLines[{row}]", ours_text.get(row), theirs_text.get(row)))
    return out


def unmatched_orders(
    mapped: Mapping[str, OrderUpsertRequested], orders: Iterable[Mapping[str, Any]]
) -> list[OrderUpsertRequested]:
    """The mapped orders that no order in `orders` matches (by `goodsOwnerOrderId`, else by order number)."""
    owner_ids, numbers = set(), set()
    for order in orders:
        info = order.get("orderInfo") or {}
        owner_ids.add(str(info.get("goodsOwnerOrderId") or ""))
        numbers.add(str(info.get("orderNumber") or ""))
    return [
        c
        for invoice_id, c in sorted(mapped.items())
        if invoice_id not in owner_ids and str(c.body.get("orderNumber") or "") not in numbers
    ]


def compare_orders(mapped: Mapping[str, OrderUpsertRequested], orders: Iterable[Mapping[str, Any]]) -> KindResult:
    """Mapped invoices (invoice id → order command) against Ongoing's orders, matched by `goodsOwnerOrderId`
    (else by order number). An order the warehouse has started is reported when it differs, never repaired."""
    by_owner_id: dict[str, Mapping[str, Any]] = {}
    by_number: dict[str, Mapping[str, Any]] = {}
    for order in orders:
        info = order.get("orderInfo") or {}
        if info.get("goodsOwnerOrderId"):
            by_owner_id.setdefault(str(info["goodsOwnerOrderId"]), order)
        if info.get("orderNumber"):
            by_number.setdefault(str(info["orderNumber"]), order)
    result = KindResult("orders", checked=len(mapped))
    for invoice_id in sorted(mapped):
        command = mapped[invoice_id]
        number = str(command.body.get("orderNumber") or invoice_id)
        entity = f"order:{invoice_id}"
        found = by_owner_id.get(invoice_id) or by_number.get(number)
        repair = replace(command, force=True)
        if found is None:
            result.differences.append(Difference("orders", number, "missing", (), repair, entity))
            continue
        fields = compare_order(command.body, found)
        if not fields:
            continue
        status, _ = order_status(dict(found))
        if status is not None and status >= WAREHOUSE_STARTED_STATUS:
            result.differences.append(Difference("orders", number, "started", tuple(fields), None, entity))
        else:
            result.differences.append(Difference("orders", number, "different", tuple(fields), repair, entity))
    return result


def compare_stock(
    products: Iterable[Mapping[str, Any]], articles: Mapping[str, Mapping[str, Any]], tenant: TenantSettings
) -> KindResult:
    """PowerOffice's `StockOnHand` against Ongoing's figure, for every product the stock write-back covers (a
    stock item whose Code is an article in Ongoing; see `map_stock`) once the warehouse has held the article
    (`warehouse_has_held`; before that PowerOffice's own figure stands, unless `stock_back_before_first_receipt`)."""
    result = KindResult("stock")
    for product in sorted(products, key=lambda p: str(p.get("Code") or "")):
        code = product.get("Code")
        article = articles.get(code.strip()) if isinstance(code, str) else None
        if article is None:
            continue
        inventory = article.get("inventoryInfo") or {}
        if not tenant.stock_back_before_first_receipt and not warehouse_has_held(inventory):
            continue
        stock = map_stock(inventory, product, tenant)
        if isinstance(stock, str):
            continue
        result.checked += 1
        on_hand = product.get("StockOnHand")
        if same(stock.value, on_hand if on_hand is not None else 0.0):
            continue
        command = StockPatchRequested(stock.product_id, stock.product_code, stock.value)
        diff = FieldDiff("StockOnHand", on_hand, stock.value)
        result.differences.append(
            Difference("stock", stock.product_code, "different", (diff,), command, f"stockback:{stock.product_id}")
        )
    return result


def map_products(
    products: Iterable[Mapping[str, Any]], groups: Mapping[int, Mapping[str, Any]], tenant: TenantSettings
) -> tuple[dict[str, ArticleUpsertRequested], list[str]]:
    """The article command for every product the tenant syncs (by article number), and the products that cannot
    be mapped (named, not compared)."""
    out: dict[str, ArticleUpsertRequested] = {}
    unmapped: list[str] = []
    for product in products:
        group_id = product.get("ProductGroupId")
        group = groups.get(group_id) if isinstance(group_id, int) else None
        try:
            if product_excluded(product, group, tenant):
                continue
            article = map_product(product, group, tenant)
        except MappingError as exc:
            unmapped.append(f"product {product.get('Id')}: {exc}")
            continue
        pid = product.get("Id")
        out[article.body["articleNumber"]] = ArticleUpsertRequested(
            article.body, pid if isinstance(pid, int) and not isinstance(pid, bool) else None, list(article.warnings)
        )
    return out, unmapped


def map_orders(
    state: Projection, invoices: Iterable[StoredEvent], since: datetime | None
) -> dict[str, OrderUpsertRequested]:
    """The order command the current mapping makes for each invoice observation whose balance changed at or after
    `since` (invoice id → command). Uses the projector's own `project_event`, so numbering agrees with it."""
    out: dict[str, OrderUpsertRequested] = {}
    for stored in invoices:
        if not isinstance(stored.event, InvoiceObserved):
            continue
        if since is not None and _balance_changed(stored) < since:
            continue
        done = project_event(state, stored)
        if isinstance(done, Command) and isinstance(done.event, OrderUpsertRequested):
            out[done.event.invoice_id] = done.event
    return out


def _balance_changed(stored: StoredEvent) -> datetime:
    assert isinstance(stored.event, InvoiceObserved)
    raw = stored.event.invoice.get("BalanceLastChangedDateTimeOffset")
    if isinstance(raw, str):
        try:
            return parse_timestamp(raw)
        except ValueError:
            pass
    return stored.recorded_at


# ---------------------------------------------------------------------------------------------------------------
# I/O


async def fetch_articles(wms: TenantOngoing, page_size: int) -> dict[str, dict[str, Any]]:
    """Every Ongoing article of the goods owner, by article number (paged by `articleSystemIdFrom`)."""
    out: dict[str, dict[str, Any]] = {}
    async for page in wms.articles(page_size=page_size):
        for row in page:
            number = row.get("articleNumber")
            if isinstance(number, str):
                out[number.strip()] = row
    return out


async def fetch_orders(wms: TenantOngoing, created_from: datetime | None, page_size: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    async for page in wms.orders(created_from=created_from, page_size=page_size):
        out.extend(page)
    return out


async def fetch_invoices(po: TenantPowerOffice, since: datetime | None) -> list[dict[str, Any]]:
    """PowerOffice's outgoing invoices whose balance changed at or after `since` (all when None), page by page."""
    after = since - timedelta(microseconds=1) if since is not None else None  # the filter is a strict `>`
    out: list[dict[str, Any]] = []
    async for page in po.outgoing_invoices(balance_changed_after=after):
        out.extend(i for i in page if isinstance(i.get("Id"), str | int))
    return out


async def observe_invoices(po: TenantPowerOffice, invoices: Sequence[dict[str, Any]]) -> list[InvoiceObserved]:
    """Full observations (lines, customer, the customer's delivery addresses) of `invoices`, shaped as the poller
    shapes them, for the few would-be orders the log does not hold. An invoice whose lines are gone is left out."""
    if not invoices:
        return []
    numbers = {i["CustomerNo"] for i in invoices if isinstance(i.get("CustomerNo"), int)}
    customers = await po.customers_by_numbers(numbers) if numbers else []
    by_number = {c["Number"]: c for c in customers if c.get("Number") is not None}
    addresses = await po.delivery_addresses(c["Id"] for c in customers) if customers else []
    by_contact: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for address in addresses:
        by_contact[address.get("ContactId", -1)].append(address)
    out = []
    for invoice in invoices:
        try:
            lines = await po.invoice_lines(str(invoice["Id"]))
        except PermanentApiError as exc:
            if exc.status == 404:
                continue
            raise
        customer = by_number.get(invoice.get("CustomerNo"))
        found = by_contact.get(customer["Id"], []) if customer else []
        delivery = sorted(found, key=lambda a: (not a.get("IsPrimary"), a.get("Id") or 0))
        out.append(InvoiceObserved(invoice=invoice, lines=lines, customer=customer, delivery_addresses=delivery))
    return out


def unobserved(
    live: Iterable[dict[str, Any]], latest: Mapping[str, StoredEvent], tenant: TenantSettings
) -> list[dict[str, Any]]:
    """The live invoices that would become orders but whose newest observation in the log (`latest`, by entity) is
    missing or shows another header: the log is behind PowerOffice for them."""
    out = []
    for invoice in live:
        try:
            if invoice_wants_order(invoice, tenant) is not None:
                continue
        except MappingError:
            continue
        stored = latest.get(f"invoice:{invoice['Id']}")
        if stored is None or not isinstance(stored.event, InvoiceObserved) or stored.event.invoice != invoice:
            out.append(invoice)
    return out


def observation_key(tenant: str, event: InvoiceObserved) -> str:
    """The poller's dedupe key for this observation, so its next read of the same record adds nothing."""
    raw = event.invoice.get("BalanceLastChangedDateTimeOffset")
    changed: str | None = None
    if isinstance(raw, str):
        try:
            changed = parse_timestamp(raw).isoformat()
        except ValueError:
            changed = None
    return poller_dedupe_key(tenant, f"invoice:{event.invoice['Id']}", changed, to_dict(event))


async def orders_window(log: EventLog, tenant: TenantSettings, since: datetime | None) -> datetime | None:
    """Where the orders comparison starts: `--since`, else the tenant's `orders_since`, else the invoice floor the
    poller stored (`poweroffice.invoices.since`, else the first cycle's start). None: every invoice in the log."""
    if since is not None:
        return since
    if tenant.orders_since is not None:
        return tenant.orders_since
    for name in ("poweroffice.invoices.since", "tenant.first_cycle"):
        text = await log.cursor(name, tenant.name)
        if text:
            try:
                return datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                continue
    return None


@dataclass
class Sides:
    """What reconcile talks to: a function giving each side's client for a tenant, and request counters."""

    poweroffice: Callable[[TenantSettings], TenantPowerOffice]
    ongoing: Callable[[TenantSettings], TenantOngoing]
    # Requests made so far per side ("poweroffice", "ongoing"); None when the caller does not count.
    counted: Callable[[], dict[str, int]] | None = None
    article_page_size: int = 1000
    order_page_size: int = 500


async def reconcile_tenant(
    log: EventLog,
    tenant: TenantSettings,
    sides: Sides,
    *,
    kinds: Sequence[Kind] = KINDS,
    since: datetime | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> tuple[TenantResult, datetime | None]:
    """Read both sides for one tenant and compare. Appends nothing. Raises ApiError when a side fails."""
    result = TenantResult(tenant.name)
    window = await orders_window(log, tenant, since)
    po, wms = sides.poweroffice(tenant), sides.ongoing(tenant)
    needs_products = "products" in kinds or "stock" in kinds
    articles: dict[str, dict[str, Any]] = {}
    articles_read = anyio.Event()
    orders: list[dict[str, Any]] = []
    products_result = KindResult("products")
    stock_result = KindResult("stock")
    numbers: set[str] = set()

    async def read_articles() -> None:
        nonlocal articles
        articles = await fetch_articles(wms, sides.article_page_size)
        articles_read.set()

    async def read_poweroffice() -> None:
        # Pages are compared as they arrive, while the limiter holds the next request back: the comparison's
        # work hides in the waits the key's limit imposes anyway.
        groups: dict[int, dict[str, Any]] = {}
        async for page in po.product_groups():
            groups.update((g["Id"], g) for g in page if isinstance(g.get("Id"), int))
        send, receive = anyio.create_memory_object_stream[list[dict[str, Any]]](4)

        async def produce() -> None:
            async with send:
                async for listed in po.products():
                    await send.send(list(listed))

        async with anyio.create_task_group() as inner:
            inner.start_soon(produce)
            async with receive:
                async for chunk in receive:
                    await articles_read.wait()
                    if "products" in kinds:
                        mapped, _unmapped = map_products(chunk, groups, tenant)
                        numbers.update(mapped)
                        part = compare_products(mapped, articles, only_in_ongoing=False)
                        products_result.checked += part.checked
                        products_result.differences.extend(part.differences)
                    if "stock" in kinds:
                        part = compare_stock(chunk, articles, tenant)
                        stock_result.checked += part.checked
                        stock_result.differences.extend(part.differences)

    async def read_orders() -> None:
        nonlocal orders
        created_from = window - ORDER_CLOCK_MARGIN if window is not None else None
        orders = await fetch_orders(wms, created_from, sides.order_page_size)

    live_invoices: list[dict[str, Any]] = []

    async def read_invoices() -> None:
        nonlocal live_invoices
        live_invoices = await fetch_invoices(po, window)

    try:
        async with anyio.create_task_group() as tg:
            if needs_products:
                tg.start_soon(read_poweroffice)
                tg.start_soon(read_articles)
            if "orders" in kinds:
                tg.start_soon(read_orders)
                tg.start_soon(read_invoices)
    except BaseExceptionGroup as group:  # the caller sees the side's own error, not the task group's wrapping
        raise _first_error(group) from None

    if "products" in kinds:
        for number in sorted(set(articles) - numbers):
            products_result.differences.append(Difference("products", number, "only_in_ongoing"))
        products_result.differences.sort(key=lambda d: (d.issue == "only_in_ongoing", d.key))
        result.kinds["products"] = products_result
    if "orders" in kinds:
        state = await Projection.load(log, tenant)
        latest = await log.latest([InvoiceObserved.TYPE], tenant=tenant.name)
        invoices = sorted(latest.values(), key=lambda e: e.position)
        # Would-be orders the log has not seen as PowerOffice has them now are observed here, and compared too.
        behind = unobserved(live_invoices, {entity: e for (_, entity), e in latest.items()}, tenant)
        fresh: dict[str, str] = {}  # invoice id -> the observation's dedupe key
        now = clock()
        for event in await observe_invoices(po, behind):
            entity = f"invoice:{event.invoice['Id']}"
            key = observation_key(tenant.name, event)
            fresh[str(event.invoice["Id"])] = key
            invoices.append(StoredEvent(0, now, tenant.name, entity, event.TYPE, event.VERSION, event, None, None, key))
        mapped_orders = map_orders(state, invoices, window)
        # An order created before the window (less the margin) is not in the listing: look the unmatched ones up
        # by number, so that "missing" means missing.
        unmatched = [str(c.body.get("orderNumber")) for c in unmatched_orders(mapped_orders, orders)]
        if unmatched:
            orders = orders + await wms.orders_by_numbers(unmatched)
        compared = compare_orders(mapped_orders, orders)
        # For an invoice the log is behind on, the repair is its observation: the projector then makes the order.
        for i, d in enumerate(compared.differences):
            invoice_id = (d.entity or "").removeprefix("order:")
            if invoice_id in fresh and d.repair is not None:
                observation = next(e.event for e in invoices if e.dedupe_key == fresh[invoice_id])
                compared.differences[i] = replace(
                    d, repair=observation, entity=f"invoice:{invoice_id}", dedupe_key=fresh[invoice_id]
                )
        result.kinds["orders"] = compared
    if "stock" in kinds:
        stock_result.differences.sort(key=lambda d: d.key)
        result.kinds["stock"] = stock_result
    return result, window


async def reconcile(
    log: EventLog,
    settings: Settings,
    sides: Sides,
    *,
    tenant: str | None = None,
    kinds: Sequence[Kind] = KINDS,
    since: datetime | None = None,
    repair: bool = False,
    by: str | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> ReconcileReport:
    """Reconcile every tenant (or one), record each in the log, and with `repair` append the repairs.

    Raises KeyError for an unknown tenant and StoreError when the log fails. A tenant whose side cannot be read is
    reported (`TenantResult.error`) and recorded; the others go on."""
    tenants = [settings.tenant(tenant)] if tenant else list(settings.tenants)
    started = clock()
    begun = anyio.current_time()
    report = ReconcileReport(started, repair, since)
    who = by or _who()
    for t in tenants:
        before = dict(sides.counted()) if sides.counted else {}
        window: datetime | None = None
        try:
            result, window = await reconcile_tenant(log, t, sides, kinds=kinds, since=since, clock=clock)
        except (ApiError, ValueError) as exc:  # an unreachable side is this tenant's result, not the end of the run
            result = TenantResult(t.name, error=f"{type(exc).__name__}: {exc}")
        if sides.counted:
            after = sides.counted()
            result.requests = {side: after.get(side, 0) - before.get(side, 0) for side in after}
        await _record(log, t, result, kinds=kinds, window=window, repair=repair, by=who)
        report.tenants[t.name] = result
    report.seconds = anyio.current_time() - begun
    return report


async def _record(
    log: EventLog,
    tenant: TenantSettings,
    result: TenantResult,
    *,
    kinds: Sequence[Kind],
    window: datetime | None,
    repair: bool,
    by: str,
) -> None:
    repairs = [d for d in result.differences if d.repair is not None and d.entity is not None] if repair else []
    record = ReconcileRecorded(
        by=by,
        kinds=list(kinds),
        window_from=window.isoformat() if window else None,
        mapping_version=MAPPING_VERSION,
        repair=repair,
        agreed=result.agreed,
        counts={k: r.counts() for k, r in result.kinds.items()},
        requests=dict(result.requests),
        repairs=len(repairs),
        error=result.error,
    )
    key = f"{tenant.name}/reconcile/{uuid.uuid4().hex}"
    head = await log.max_position()
    await log.append([NewEvent(tenant.name, "reconcile", record, key)])
    stored: StoredEvent | None = None
    async for e in log.read(after=head, tenant=tenant.name, entity="reconcile", types=[ReconcileRecorded.TYPE]):
        if e.dedupe_key == key:
            stored = e
            break
    result.record_position = stored.position if stored else None
    if not repairs or stored is None:
        return
    out = []
    for d in repairs:
        assert d.repair is not None
        assert d.entity is not None
        out.append(
            NewEvent(
                tenant.name,
                d.entity,
                d.repair,
                d.dedupe_key or f"{tenant.name}/{d.entity}/reconcile/{stored.position}",
                causation=stored.position,
                mapping_version=MAPPING_VERSION,
            )
        )
    result.appended = (await log.append(out)).appended


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"


# ---------------------------------------------------------------------------------------------------------------
# Output


def print_report(console: Console, report: ReconcileReport, *, as_json: bool = False, limit: int = 20) -> None:
    """A summary table per tenant and kind, then the differences grouped by field (or all of it as JSON)."""
    if as_json:
        console.print_json(orjson.dumps(report.as_json()).decode())
        return
    table = Table(title=f"reconcile {report.started:%Y-%m-%d %H:%M:%S} UTC", pad_edge=False)
    width = max((len(name) for name in report.tenants), default=6)
    table.add_column("tenant", no_wrap=True, min_width=max(6, width))
    table.add_column("kind", no_wrap=True, min_width=8)
    headers = {"different": "differs", "only_in_ongoing": "only in Ongoing"}
    for column in ("checked", "agree", *ISSUES):
        header = headers.get(column, column)
        table.add_column(header, justify="right", min_width=max(len(w) for w in header.split()))
    for name, t in report.tenants.items():
        if t.error:
            table.add_row(name, "[red]error[/red]", *([""] * (2 + len(ISSUES))))
        for kind, r in t.kinds.items():
            c = r.counts()
            table.add_row(name, kind, *(str(c[k]) for k in ("checked", "agree", *ISSUES)))
    console.print(table)
    for name, t in report.tenants.items():
        if t.error:
            console.print(f"{name}: could not be read: {t.error}", markup=False, highlight=False)
        for (kind, label), items in group_by_field(t.differences).items():
            console.print(f"{name} {kind} {label}: {len(items)}", markup=False, highlight=False)
            for key, ours, theirs in items[:limit]:
                shown = (
                    f"      {key}"
                    if ours is None and theirs is None
                    else f"      {key}: {_show(ours)} ≠ {_show(theirs)}"
                )
                console.print(shown, markup=False, highlight=False)
            if len(items) > limit:
                console.print(f"      ... and {len(items) - limit} more", markup=False)
    requests = report.requests()
    if requests:
        shown_requests = ", ".join(f"{side} {n}" for side, n in sorted(requests.items()))
        console.print(f"requests: {shown_requests} ({sum(requests.values())} in all) in {report.seconds:.1f} s")
    if report.agreed:
        console.print("PowerOffice and Ongoing agree")
    appended = sum(t.appended for t in report.tenants.values())
    if report.repair:
        console.print(f"{appended} repair command(s) appended: the next `pipeline sync` (or `run` cycle) sends them")
        for name, t in report.tenants.items():
            kept = [d for d in t.differences if d.repair is None]
            if kept:
                console.print(f"  {name}: {len(kept)} left alone (only in Ongoing, or started by the warehouse)")
    elif not report.agreed:
        console.print("dry run: nothing appended but the record; --repair appends the commands that fix it")


def group_by_field(differences: Iterable[Difference]) -> dict[tuple[str, str], list[tuple[str, Any, Any]]]:
    """(kind, field or issue) → [(key, PowerOffice side, Ongoing side)], for reading differences by field."""
    out: dict[tuple[str, str], list[tuple[str, Any, Any]]] = defaultdict(list)
    for d in differences:
        if d.issue == "missing":
            out[(d.kind, "missing in Ongoing")].append((d.key, None, None))
        elif d.issue == "only_in_ongoing":
            out[(d.kind, "only in Ongoing (left alone)")].append((d.key, None, None))
        else:
            suffix = " (started by the warehouse: left alone)" if d.issue == "started" else ""
            for f in d.fields:
                out[(d.kind, f"{f.field}{suffix}")].append((d.key, f.poweroffice, f.ongoing))
    return dict(out)


def _show(value: Any) -> str:
    text = orjson.dumps(value).decode() if value is not None else "—"
    return text if len(text) <= 60 else text[:59] + "…"


# ---------------------------------------------------------------------------------------------------------------
# The command


class RequestCounter:
    """Counts the HTTP requests a session starts, per side (by URL prefix), retries and token calls included."""

    def __init__(self, prefixes: Mapping[str, Sequence[str]]) -> None:
        self.prefixes = {side: tuple(p.rstrip("/") for p in ps) for side, ps in prefixes.items()}
        self.counts: dict[str, int] = {side: 0 for side in prefixes}
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)

    async def _started(
        self, session: aiohttp.ClientSession, context: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        url = str(params.url)
        for side, prefixes in self.prefixes.items():
            if url.startswith(prefixes):
                self.counts[side] += 1
                return

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


async def run(
    settings: Settings,
    *,
    tenant: str | None = None,
    kinds: Sequence[Kind] = KINDS,
    since: datetime | None = None,
    repair: bool = False,
    by: str | None = None,
    article_page_size: int | None = None,
) -> ReconcileReport:
    """Open the log, a session and both clients (the PowerOffice one with its limiter per subscription key),
    reconcile, close. Takes no lease: it reads both APIs and only appends, like `replay`."""
    from pipeline.clients.ongoing import OngoingClient
    from pipeline.clients.poweroffice import PowerOfficeClient
    from pipeline.clients.ratelimit import LimiterRegistry

    po_settings = settings.poweroffice
    counter = RequestCounter(
        {
            "poweroffice": (po_settings.api_url, po_settings.token_url),
            "ongoing": (settings.ongoing.api_url,),
        }
    )
    limiters = LimiterRegistry(po_settings.requests_per_second)
    async with (
        await open_log(settings.database) as log,
        aiohttp.ClientSession(trace_configs=[counter.trace]) as session,
    ):
        po = PowerOfficeClient(session, po_settings, limiters.for_key(po_settings.subscription_key.reveal()))
        wms = OngoingClient(session, settings.ongoing)
        sides = Sides(
            po.for_tenant,
            wms.for_tenant,
            counter.snapshot,
            article_page_size=article_page_size or settings.ongoing.page_size,
        )
        return await reconcile(log, settings, sides, tenant=tenant, kinds=kinds, since=since, repair=repair, by=by)


async def command(
    console: Console,
    settings: Settings,
    *,
    tenant: str | None,
    kinds: Sequence[Kind],
    since: datetime | None,
    repair: bool,
    as_json: bool,
) -> int:
    """`pipeline reconcile`: exit 0 when both systems agree, 1 when they differ (or a side could not be read)."""
    report = await run(settings, tenant=tenant, kinds=kinds, since=since, repair=repair)
    print_report(console, report, as_json=as_json)
    return report.exit_code
