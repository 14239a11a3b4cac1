"""PowerOffice pollers: products and outgoing invoices, appended to the log as raw observations (DESIGN §3).

Rules both pollers keep:
- **Cursor from the data.** The cursor is the largest change timestamp *seen in the results* (ISO text), never
  the local clock. Each poll asks for changes after `cursor - overlap`, re-reading a window so records that
  became visible late (PowerOffice reads from a replica) are not lost at the boundary.
- **Nothing twice.** Each observation's dedupe key is `tenant/entity@change-timestamp#content-hash`, so a record
  re-read unchanged in the overlap (or identical to one already stored) is skipped by the log. For products the
  hash leaves out the stock fields, which PowerOffice does not count as a product change (see
  `PRODUCT_STOCK_FIELDS`).
- **One transaction per page, cursor last.** Every page is appended in its own transaction; the last page's
  transaction also moves the cursor. A poll that fails part-way has stored some observations (harmless: they
  are deduplicated when re-read) and has **not** moved its cursor, because pages are not in timestamp order.
- **First run** (no cursor): products in full; invoices only with a balance change after `orders_since` (the
  tenant's setting, else the first cycle's start, stored as cursor `poweroffice.invoices.since`); later polls'
  overlap never reaches back past it.

Invoices: only those that would become orders (`tenant.order_trigger`: "paid" = `Balance == 0`, "invoiced" =
any; never credit notes) get their lines and a snapshot of their customer and its delivery addresses. Customer
and address look-ups are batched per page, so a paid invoice costs about one request (its lines). Other
invoices are still observed (without lines) so that audit can see them.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import orjson

from pipeline.clients.poweroffice import TenantPowerOffice, parse_timestamp
from pipeline.config import TenantSettings
from pipeline.errors import PermanentApiError
from pipeline.eventlog.base import EventLog, NewEvent
from pipeline.events import InvoiceObserved, ProductObserved, to_dict
from pipeline.mapping.orders import invoice_wants_order

logger = logging.getLogger(__name__)

PRODUCTS_CURSOR = "poweroffice.products"
INVOICES_CURSOR = "poweroffice.invoices"
INVOICES_SINCE = "poweroffice.invoices.since"
# A timestamp this far beyond `now` is not trusted as a cursor: one bad record must not blind every later poll.
FUTURE_TOLERANCE = timedelta(days=1)

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll did: events appended, records read, pages read, HTTP requests made, cursor after it."""

    observed: int
    seen: int
    pages: int
    requests: int
    cursor: str | None


def _keyed(page: list[JsonObject], kind: str, tenant: TenantSettings) -> list[JsonObject]:
    """The records of a page that have an `Id` to key them by. One without (PowerOffice always sends it, so this
    is damage in transit or an API change) cannot be an entity: it is logged and left out, and the rest flows."""
    kept = [r for r in page if isinstance(r, dict) and isinstance(r.get("Id"), int | str) and str(r["Id"]).strip()]
    if len(kept) != len(page):
        logger.warning("%s: %d %s record(s) without an Id left out", tenant.name, len(page) - len(kept), kind)
    return kept


def product_entity(product: JsonObject) -> str:
    return f"product:{product['Id']}"


def invoice_entity(invoice: JsonObject) -> str:
    return f"invoice:{invoice['Id']}"


# A product's stock fields are not part of what the product poll tracks: PowerOffice does not count a stock
# change as a product change (LastChangedDateTimeOffset stays), and the values are the ones our own stock
# write-back put there. A product re-read in the overlap with only these changed is the same observation.
PRODUCT_STOCK_FIELDS = frozenset({"StockOnHand", "StockAvailable", "StockOnHandLastChangedDatetimeOffset"})


def dedupe_key(tenant: str, entity: str, changed: str | None, content: object) -> str:
    """`tenant/entity@changed#hash`: equal observations of one record get equal keys."""
    digest = hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]
    return f"{tenant}/{entity}@{changed or '-'}#{digest}"


def product_identity(event: ProductObserved) -> JsonObject:
    """What makes two product observations the same: everything but the stock fields."""
    product = {k: v for k, v in event.product.items() if k not in PRODUCT_STOCK_FIELDS}
    return {"product": product, "group": event.group}


def _timestamp(record: JsonObject, field: str) -> datetime | None:
    raw = record.get(field)
    if not isinstance(raw, str) or not raw:
        return None
    try:
        return parse_timestamp(raw)
    except ValueError:
        logger.warning("unreadable %s %r on %s", field, raw, record.get("Id"))
        return None


def _later(best: datetime | None, seen: datetime | None, now: datetime) -> datetime | None:
    if seen is None:
        return best
    if seen > now + FUTURE_TOLERANCE:
        logger.warning("ignoring change timestamp %s for the cursor: it lies beyond %s", seen.isoformat(), now)
        return best
    return seen if best is None or seen > best else best


class _PageWriter:
    """Appends each page in its own transaction, holding one page back so the last one carries the cursor."""

    def __init__(self, log: EventLog) -> None:
        self._log = log
        self._held: list[NewEvent] | None = None
        self.appended = 0

    async def page(self, events: list[NewEvent]) -> None:
        if self._held is not None:
            self.appended += (await self._log.append(self._held)).appended
        self._held = events

    async def finish(self, cursors: dict[tuple[str, str], str]) -> None:
        events = self._held or []
        self._held = None
        if events or cursors:
            self.appended += (await self._log.append(events, cursors=cursors or None)).appended


async def _finish(
    writer: _PageWriter,
    cursor_name: str,
    tenant: TenantSettings,
    cursor: datetime | None,
    best: datetime | None,
    seen: int,
    pages: int,
    requests: int,
) -> PollResult:
    """Append the held last page with the cursor move (when the largest timestamp seen moved it)."""
    moves: dict[tuple[str, str], str] = {}
    if best is not None and best != cursor:
        moves[(cursor_name, tenant.name)] = best.isoformat()
    await writer.finish(moves)
    return PollResult(writer.appended, seen, pages, requests, best.isoformat() if best else None)


# --------------------------------------------------------------------------------------------------- products


async def poll_products(
    log: EventLog,
    client: TenantPowerOffice,
    tenant: TenantSettings,
    *,
    overlap: timedelta,
    now: datetime,
) -> PollResult:
    """Observe the tenant's products changed since the cursor (all of them on the first run).

    Each product is observed with its product group. Raises the client's `ApiError` or the log's `StoreError`;
    the cursor has not moved then.
    """
    requests_before = client.requests
    stored = await log.cursor(PRODUCTS_CURSOR, tenant.name)
    cursor = parse_timestamp(stored) if stored else None
    groups: dict[int, JsonObject] | None = None
    writer = _PageWriter(log)
    best = cursor
    pages = seen = 0
    async for raw_page in client.products(changed_after=cursor - overlap if cursor else None):
        page = _keyed(raw_page, "product", tenant)
        if groups is None:  # only when something changed: an idle poll costs one request
            groups = {}
            async for group_page in client.product_groups():
                groups.update((g["Id"], g) for g in group_page if isinstance(g.get("Id"), int))
        events = []
        for product in page:
            group = groups.get(product["ProductGroupId"]) if product.get("ProductGroupId") is not None else None
            event = ProductObserved(product=product, group=group)
            entity = product_entity(product)
            changed = _timestamp(product, "LastChangedDateTimeOffset")
            best = _later(best, changed, now)
            stamp = changed.isoformat() if changed else None
            key = dedupe_key(tenant.name, entity, stamp, product_identity(event))
            events.append(NewEvent(tenant=tenant.name, entity=entity, event=event, dedupe_key=key))
        await writer.page(events)
        pages += 1
        seen += len(raw_page)
    return await _finish(writer, PRODUCTS_CURSOR, tenant, cursor, best, seen, pages, client.requests - requests_before)


# --------------------------------------------------------------------------------------------------- invoices


def becomes_order(invoice: JsonObject, tenant: TenantSettings) -> bool:
    """Whether this invoice would become a warehouse order under the tenant's `order_trigger`.

    The mapping's own rule decides, so the poller fetches details for exactly the invoices the projector maps.
    """
    return invoice_wants_order(invoice, tenant) is None


async def poll_invoices(
    log: EventLog,
    client: TenantPowerOffice,
    tenant: TenantSettings,
    *,
    overlap: timedelta,
    now: datetime,
    orders_since: datetime,
    concurrency: int = 8,
) -> PollResult:
    """Observe the tenant's outgoing invoices whose balance changed since the cursor.

    The floor below which no balance change is read is `tenant.orders_since` when configured; otherwise the
    `orders_since` given on the first run (the first cycle's start), stored as cursor `poweroffice.invoices.since`
    and used from then on. `concurrency` bounds the line fetches in flight (the
    key's rate limiter still decides when each starts). Raises the client's `ApiError` or the log's
    `StoreError`; the cursor has not moved then.
    """
    requests_before = client.requests
    floor_text = await log.cursor(INVOICES_SINCE, tenant.name)
    # A configured orders_since is authoritative; a default one (the first cycle's start) is remembered, so a
    # later default cannot move it.
    floor = tenant.orders_since or (parse_timestamp(floor_text) if floor_text else orders_since)
    if floor_text is None or parse_timestamp(floor_text) != floor:
        # Stored before polling: if this first poll fails, the retry keeps the same floor.
        await log.append([], cursors={(INVOICES_SINCE, tenant.name): floor.isoformat()})
    stored = await log.cursor(INVOICES_CURSOR, tenant.name)
    cursor = parse_timestamp(stored) if stored else None
    after = max(cursor - overlap, floor) if cursor else floor

    writer = _PageWriter(log)
    best = cursor
    pages = seen = 0
    async for raw_page in client.outgoing_invoices(balance_changed_after=after):
        page = _keyed(raw_page, "invoice", tenant)
        details = await _details(log, client, tenant, page, cursor, concurrency)
        events = []
        for invoice in page:
            entity = invoice_entity(invoice)
            changed = _timestamp(invoice, "BalanceLastChangedDateTimeOffset")
            best = _later(best, changed, now)
            if becomes_order(invoice, tenant):
                found = details.get(invoice["Id"])
                if found is None:  # already observed exactly like this, or vanished meanwhile
                    continue
                event = found
            else:
                event = InvoiceObserved(invoice=invoice, lines=[])
            key = dedupe_key(tenant.name, entity, changed.isoformat() if changed else None, to_dict(event))
            events.append(NewEvent(tenant=tenant.name, entity=entity, event=event, dedupe_key=key))
        await writer.page(events)
        pages += 1
        seen += len(raw_page)
    return await _finish(writer, INVOICES_CURSOR, tenant, cursor, best, seen, pages, client.requests - requests_before)


async def _already_observed(log: EventLog, tenant: TenantSettings, invoice: JsonObject) -> bool:
    """Whether the latest stored observation of this invoice has the same header and its details."""
    entity = invoice_entity(invoice)
    latest = (await log.latest([InvoiceObserved.TYPE], tenant=tenant.name, entity=entity)).get((tenant.name, entity))
    if latest is None or not isinstance(latest.event, InvoiceObserved):
        return False
    previous = latest.event
    return previous.invoice == invoice and (bool(previous.lines) or previous.customer is not None)


async def _details(
    log: EventLog,
    client: TenantPowerOffice,
    tenant: TenantSettings,
    page: list[JsonObject],
    cursor: datetime | None,
    concurrency: int,
) -> dict[str, InvoiceObserved]:
    """Full observations (lines, customer, delivery addresses) for the page's would-be orders that need one."""
    wanted: list[JsonObject] = []
    for invoice in page:
        if not becomes_order(invoice, tenant):
            continue
        changed = _timestamp(invoice, "BalanceLastChangedDateTimeOffset")
        # Only a record inside the re-read window can have been observed before; look those up, one by one
        # (the window is minutes of activity), instead of loading the tenant's whole invoice history.
        maybe_seen = cursor is not None and changed is not None and changed <= cursor
        if maybe_seen and await _already_observed(log, tenant, invoice):
            continue
        wanted.append(invoice)
    if not wanted:
        return {}

    numbers = {i["CustomerNo"] for i in wanted if isinstance(i.get("CustomerNo"), int)}
    customers = await client.customers_by_numbers(numbers) if numbers else []
    by_number = {c["Number"]: c for c in customers if c.get("Number") is not None}
    addresses = await client.delivery_addresses(c["Id"] for c in customers) if customers else []
    by_contact: dict[int, list[JsonObject]] = {}
    for address in addresses:
        by_contact.setdefault(address.get("ContactId", -1), []).append(address)

    lines: dict[str, list[JsonObject]] = {}
    failures: list[Exception] = []
    limit = anyio.CapacityLimiter(max(1, concurrency))

    async def fetch(invoice: JsonObject, scope: anyio.CancelScope) -> None:
        async with limit:
            try:
                lines[invoice["Id"]] = await client.invoice_lines(invoice["Id"])
            except PermanentApiError as exc:
                if exc.status != 404:
                    failures.append(exc)
                    scope.cancel()
                    return
                # Deleted between the list and the lines call: nothing to observe any more.
                logger.warning(
                    "invoice %s of tenant %s vanished before its lines were read", invoice["Id"], tenant.name
                )
            except Exception as exc:
                # Keep the first failure and stop the rest, so the caller sees our error, not an ExceptionGroup.
                failures.append(exc)
                scope.cancel()

    async with anyio.create_task_group() as group:
        for invoice in wanted:
            group.start_soon(fetch, invoice, group.cancel_scope)
    if failures:
        raise failures[0]

    out: dict[str, InvoiceObserved] = {}
    for invoice in wanted:
        if invoice["Id"] not in lines:
            continue
        customer = by_number.get(invoice.get("CustomerNo"))
        out[invoice["Id"]] = InvoiceObserved(
            invoice=invoice,
            lines=lines[invoice["Id"]],
            customer=customer,
            delivery_addresses=_sorted(by_contact.get(customer["Id"], [])) if customer else [],
        )
    return out


def _sorted(addresses: Iterable[JsonObject]) -> list[JsonObject]:
    """Primary address first, then by id: a stable order, so equal snapshots hash equally."""
    return sorted(addresses, key=lambda a: (not a.get("IsPrimary"), a.get("Id") or 0))
