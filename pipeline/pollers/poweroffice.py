"""PowerOffice pollers: products and outgoing invoices, appended to the log as raw observations (DESIGN §3).

Rules both pollers keep:
- **Cursor from the data, capped by the server's clock.** The cursor is the largest change timestamp *seen in
  the results* (ISO text), never the local clock, but never later than the server's `Date` on the poll's first
  page less the overlap: a record changed while the poll ran, or stamped in the future, is read again next time
  (a future stamp is kept in its event as it came). Each poll asks for changes after `cursor - overlap`,
  re-reading a window so records that became visible late (PowerOffice reads from a replica) are not lost.
- **Pages back to back.** All list pages of a resource are read before anything else (groups, lines,
  customers), so the list is read in as short a time as the server allows; a delta is held in memory for that.
  A first product sweep streams instead: its groups are read first.
- **Nothing twice.** Each observation's dedupe key is `tenant/entity@change-timestamp#content-hash`, so a record
  re-read unchanged in the overlap (or identical to one already stored) is skipped by the log. For products the
  hash leaves out the stock fields, which PowerOffice does not count as a product change (see
  `PRODUCT_STOCK_FIELDS`).
- **One malformed record is its own problem.** A record the poller cannot read (no usable `Id`, a
  `ProductGroupId` that is not an id, a value the JSON parser refused, lines/customer/addresses of an invoice
  that would not parse) is appended as `observation.rejected`, naming the field and keeping the record; its
  change time still moves the cursor, and every other record of the page flows. Rejected invoices are read
  again by id on every poll (a fix to a line or a customer moves no balance time). A record the poller can read
  but the mapping cannot (a `Balance` of "n/a") is observed, with its details, and the projector records the
  `mapping.failed`.
- **One transaction per page, cursor last.** Every page is appended in its own transaction; the last page's
  transaction also moves the cursor. A poll that fails part-way has stored some observations (harmless: they
  are deduplicated when re-read) and has **not** moved its cursor, because pages are not in timestamp order.
- **First run** (no cursor): products in full; invoices only with a balance change after `orders_since` (the
  tenant's setting, else the first cycle's start, stored as cursor `poweroffice.invoices.since`); later polls'
  overlap never reaches back past it.

Invoices: only those that would become orders (`tenant.order_trigger`: "paid" = `Balance == 0`, "invoiced" =
any; never credit notes), or whose header the mapping cannot classify, get their lines and a snapshot of their
customer and its delivery addresses. Customer and address look-ups are batched per page, so a paid invoice costs
about one request (its lines). Other invoices are still observed (without lines) so that audit can see them.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import anyio
import orjson

from pipeline.clients.lenient_json import Unreadable
from pipeline.clients.poweroffice import Page, TenantPowerOffice, parse_timestamp
from pipeline.config import TenantSettings
from pipeline.errors import AuthError, MappingError, PermanentApiError
from pipeline.eventlog.base import EventLog, NewEvent
from pipeline.events import OBSERVED_TYPES, InvoiceObserved, ObservationRejected, ProductObserved, to_dict
from pipeline.mapping.orders import invoice_wants_order

logger = logging.getLogger(__name__)

PRODUCTS_CURSOR = "poweroffice.products"
INVOICES_CURSOR = "poweroffice.invoices"
INVOICES_SINCE = "poweroffice.invoices.since"
PRODUCTS = "Products"
INVOICES = "OutgoingInvoices"
_INT64 = 2**63

JsonObject = dict[str, Any]


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll did: events appended, records read, pages read, HTTP requests made, cursor after it, and
    how many records were rejected (appended as `observation.rejected`)."""

    observed: int
    seen: int
    pages: int
    requests: int
    cursor: str | None
    rejected: int = 0


def product_entity(product: JsonObject) -> str:
    return f"product:{product['Id']}"


def invoice_entity(invoice: JsonObject) -> str:
    return f"invoice:{invoice['Id']}"


# A product's stock fields are not part of what the product poll tracks: PowerOffice does not count a stock
# change as a product change (LastChangedDateTimeOffset stays), and the values are the ones our own stock
# write-back put there. A product re-read in the overlap with only these changed is the same observation.
PRODUCT_STOCK_FIELDS = frozenset({"StockOnHand", "StockAvailable", "StockOnHandLastChangedDatetimeOffset"})


def _digest(content: object) -> str:
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:24]


def dedupe_key(tenant: str, entity: str, changed: str | None, content: object) -> str:
    """`tenant/entity@changed#hash`: equal observations of one record get equal keys."""
    return f"{tenant}/{entity}@{changed or '-'}#{_digest(content)}"


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
    except (ValueError, OverflowError):  # not a date-time, or one that cannot be taken to UTC (year 1, +01:00)
        logger.warning("unreadable %s %r on %s", field, raw[:60], str(record.get("Id"))[:60])
        return None


# ------------------------------------------------------------------------------------------ what can be read


def _int_id(value: object) -> int | None:
    """An int64 id as the API has them (a product's or a group's `Id`), or None when it is not one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < _INT64:
        return None
    return value


def _invoice_id(value: object) -> str | None:
    """An invoice's `Id` (a uuid in the API) as the API wrote it, or None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        uuid.UUID(value)
    except ValueError:
        return None
    return value


def _group_id(value: object) -> int | MappingError | None:
    """A `ProductGroupId`: an id, None (no group), or the MappingError saying why it is not an id."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT64:
        shown = orjson.dumps(value).decode()
        return MappingError("ProductGroupId", f"expected a product group id, got {shown[:60]}")
    return value


def _number(value: object) -> int | None:
    """A customer number (`CustomerNo`, `Number`) or contact id as an int, or None when it is not one."""
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _INT64:
        return None
    return value


class _Rejections:
    """Builds the `observation.rejected` events of one poll."""

    def __init__(self, tenant: TenantSettings, kind: str, resource: str, changed_field: str) -> None:
        self.tenant = tenant
        self.kind = kind
        self.resource = resource
        self.changed_field = changed_field
        self.count = 0

    def record(
        self, record: JsonObject, entity: str | None, field: str, reason: str, *, raw: str | None = None
    ) -> NewEvent:
        """A record that parsed but cannot be observed. `entity` None: it has no usable Id. `raw`: the text of a
        part of it that would not parse (a line, its customer, an address), kept with it."""
        return self._event(record, raw, entity, field, reason)

    def unreadable(self, item: Unreadable, entity: str | None) -> NewEvent:
        """A record the JSON parser refused: kept as raw text, with the members that did parse."""
        return self._event(item.readable, item.raw, entity, item.field, item.reason)

    def _event(self, record: JsonObject, raw: str | None, entity: str | None, field: str, reason: str) -> NewEvent:
        self.count += 1
        content: object = raw if raw is not None else record
        name = self.tenant.name
        # Without an Id the record is named by its content: the same broken record read again adds nothing.
        entity = entity or f"{self.kind}:?{_digest(content)[:12]}"
        changed = _timestamp(record, self.changed_field)
        stamp = changed.isoformat() if changed else "-"
        logger.warning("%s %s: %s record rejected: %s: %s", name, entity, self.kind, field, reason)
        event = ObservationRejected(self.resource, field, reason, record, raw)
        return NewEvent(name, entity, event, f"{name}/{entity}@{stamp}#rejected-{_digest(content)}")


class _Cursor:
    """The cursor of one poll: the largest change time seen, capped at the server's time of the first page less
    the overlap (the local clock's `now` when the server sent no `Date`)."""

    def __init__(self, stored: datetime | None, overlap: timedelta, now: datetime) -> None:
        self.stored = stored
        self.overlap = overlap
        self.now = now
        self.best: datetime | None = None
        self.server: datetime | None = None
        self.cap: datetime | None = None

    def page(self, page: Page) -> None:
        if self.cap is None:
            if page.server_time is None:
                logger.warning("no Date header on a PowerOffice page: the cursor is capped by the local clock")
            self.server = page.server_time or self.now
            self.cap = self.server - self.overlap

    def seen(self, record: JsonObject, field: str) -> None:
        changed = _timestamp(record, field)
        if changed is not None and (self.best is None or changed > self.best):
            self.best = changed

    def after(self) -> datetime | None:
        """The cursor after this poll: never past the cap, never back from the stored one unless that lies
        past the cap (a future stamp an older version trusted)."""
        if self.cap is None:
            return self.stored
        target = self.best if self.stored is None or (self.best is not None and self.best > self.stored) else None
        if target is None:
            return min(self.stored, self.cap) if self.stored is not None else None
        if target > self.cap:
            if self.server is not None and target > self.server:
                logger.warning(
                    "change time %s lies after the server's time %s: kept in the event, the cursor stops at %s",
                    target.isoformat(),
                    self.server.isoformat(),
                    self.cap.isoformat(),
                )
            return self.cap
        return target


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
    cursor: _Cursor,
    seen: int,
    pages: int,
    requests: int,
    rejected: int,
) -> PollResult:
    """Append the held last page with the cursor move (when this poll moved it)."""
    moves: dict[tuple[str, str], str] = {}
    after = cursor.after()
    if after is not None and after != cursor.stored:
        moves[(cursor_name, tenant.name)] = after.isoformat()
    await writer.finish(moves)
    return PollResult(writer.appended, seen, pages, requests, after.isoformat() if after else None, rejected)


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

    Each product is observed with its product group. `now` (the cycle's clock) caps the cursor only when the
    server sends no `Date`. Raises the client's `ApiError` (`AuthError` for refused credentials) or the log's
    `StoreError`; the cursor has not moved then.
    """
    requests_before = client.requests
    stored = await log.cursor(PRODUCTS_CURSOR, tenant.name)
    cursor = _Cursor(parse_timestamp(stored) if stored else None, overlap, now)
    rejections = _Rejections(tenant, "product", PRODUCTS, "LastChangedDateTimeOffset")
    writer = _PageWriter(log)
    pages = seen = 0
    if cursor.stored is None:
        # A full sweep: every group will be needed, and the pages stream into the log as they come.
        groups = await _groups(client)
        async for page in client.products():
            cursor.page(page)
            await writer.page(_product_events(page, groups, tenant, cursor, rejections))
            pages += 1
            seen += page.size
    else:
        changed_after = cursor.stored - overlap
        delta = [page async for page in client.products(changed_after=changed_after)]
        # An idle poll costs one request; so does one that only re-reads its overlap unchanged (each product
        # keeps the group it was last observed with). Any other product needs the groups.
        known = await _known_groups(log, tenant, delta)
        groups = known if known is not None else await _groups(client)
        for page in delta:
            cursor.page(page)
            await writer.page(_product_events(page, groups, tenant, cursor, rejections))
            pages += 1
            seen += page.size
    requests = client.requests - requests_before
    return await _finish(writer, PRODUCTS_CURSOR, tenant, cursor, seen, pages, requests, rejections.count)


async def _known_groups(log: EventLog, tenant: TenantSettings, delta: list[Page]) -> dict[int, JsonObject] | None:
    """The groups of a delta whose every product equals its last observation but for the stock fields (the
    overlap re-reading what it saw), taken from those observations; None when any product is new, changed or
    unreadable, or was observed without the group it names: then the groups are read from the server."""
    products = [product for page in delta for product in page]
    if any(page.rejected for page in delta):
        return None
    entities: dict[str, JsonObject] = {}
    for product in products:
        pid = _int_id(product.get("Id"))
        if pid is None:
            return None
        entities[f"product:{pid}"] = product
    if not entities:
        return {}
    heads = await log.latest([ProductObserved.TYPE], tenant=tenant.name, entities=list(entities))
    groups: dict[int, JsonObject] = {}
    for entity, product in entities.items():
        head = heads.get((tenant.name, entity))
        if head is None or not isinstance(head.event, ProductObserved):
            return None
        seen = head.event
        if product_identity(ProductObserved(product, seen.group)) != product_identity(seen):
            return None
        group_id = _group_id(product.get("ProductGroupId"))
        if isinstance(group_id, MappingError):
            return None
        if group_id is not None:
            if seen.group is None:
                return None
            groups[group_id] = seen.group
    return groups


async def _groups(client: TenantPowerOffice) -> dict[int, JsonObject]:
    groups: dict[int, JsonObject] = {}
    async for page in client.product_groups():
        for group in page:
            gid = _int_id(group.get("Id"))
            if gid is not None:
                groups[gid] = group
        for item in page.rejected:
            logger.warning("%s: an unreadable product group: %s", client.tenant.name, item.reason)
    return groups


def _product_events(
    page: Page, groups: dict[int, JsonObject], tenant: TenantSettings, cursor: _Cursor, rejections: _Rejections
) -> list[NewEvent]:
    events: list[NewEvent] = []
    for item in page.rejected:
        cursor.seen(item.readable, "LastChangedDateTimeOffset")
        pid = _int_id(item.readable.get("Id"))
        events.append(rejections.unreadable(item, f"product:{pid}" if pid is not None else None))
    for product in page:
        cursor.seen(product, "LastChangedDateTimeOffset")
        pid = _int_id(product.get("Id"))
        if pid is None:
            shown = orjson.dumps(product.get("Id")).decode()[:60]
            events.append(rejections.record(product, None, "Id", f"expected a product id, got {shown}"))
            continue
        entity = f"product:{pid}"
        group_id = _group_id(product.get("ProductGroupId"))
        if isinstance(group_id, MappingError):
            events.append(rejections.record(product, entity, group_id.field, group_id.reason))
            continue
        event = ProductObserved(product=product, group=groups.get(group_id) if group_id is not None else None)
        changed = _timestamp(product, "LastChangedDateTimeOffset")
        stamp = changed.isoformat() if changed else None
        key = dedupe_key(tenant.name, entity, stamp, product_identity(event))
        events.append(NewEvent(tenant=tenant.name, entity=entity, event=event, dedupe_key=key))
    return events


# --------------------------------------------------------------------------------------------------- invoices


def becomes_order(invoice: JsonObject, tenant: TenantSettings) -> bool:
    """Whether this invoice would become a warehouse order under the tenant's `order_trigger`.

    The mapping's own rule decides, so the poller fetches details for exactly the invoices the projector maps.
    An invoice whose header the rule cannot read (a `Balance` of "n/a") gets its details too: the projector
    records the mapping failure, and a mapping fixed later can still make the order from the observation.
    """
    try:
        return invoice_wants_order(invoice, tenant) is None
    except MappingError:
        return True


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
    and used from then on. Every list page is read before any lines or customers. `concurrency` bounds the line
    fetches in flight (the key's rate limiter still decides when each starts). Raises the client's `ApiError`
    (`AuthError` for refused credentials) or the log's `StoreError`; the cursor has not moved then.
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
    cursor = _Cursor(parse_timestamp(stored) if stored else None, overlap, now)
    after = max(cursor.stored - overlap, floor) if cursor.stored else floor
    rejections = _Rejections(tenant, "invoice", INVOICES, "BalanceLastChangedDateTimeOffset")

    listed = [page async for page in client.outgoing_invoices(balance_changed_after=after)]
    # A rejected invoice does not come back by itself: fixing a line or a customer moves no balance time. So the
    # standing rejections are read again by id on every poll, and a fix in PowerOffice brings them back.
    standing = await _standing_rejections(log, tenant)
    listed_ids = {i.get("Id") for page in listed for i in page}
    listed_ids |= {u.readable.get("Id") for page in listed for u in page.rejected}
    retry = sorted(i for i in standing if i not in listed_ids)
    again = await client.outgoing_invoices_by_ids(retry) if retry else None

    writer = _PageWriter(log)
    pages = seen = 0
    for page in [*listed, *([again] if again is not None else [])]:
        delta = page is not again  # a page read again by id says nothing about the cursor
        if delta:
            cursor.page(page)
        events: list[NewEvent] = []
        for item in page.rejected:
            if delta:
                cursor.seen(item.readable, "BalanceLastChangedDateTimeOffset")
            iid = _invoice_id(item.readable.get("Id"))
            events.append(rejections.unreadable(item, f"invoice:{iid}" if iid is not None else None))
        readable: list[JsonObject] = []
        for invoice in page:
            if delta:
                cursor.seen(invoice, "BalanceLastChangedDateTimeOffset")
            if _invoice_id(invoice.get("Id")) is None:
                shown = orjson.dumps(invoice.get("Id")).decode()[:60]
                events.append(rejections.record(invoice, None, "Id", f"expected an invoice id (a uuid), got {shown}"))
            else:
                readable.append(invoice)
        details = await _details(log, client, tenant, readable, concurrency, first=cursor.stored is None)
        for invoice in readable:
            entity = invoice_entity(invoice)
            changed = _timestamp(invoice, "BalanceLastChangedDateTimeOffset")
            if becomes_order(invoice, tenant):
                found = details.get(invoice["Id"])
                if found is None:  # already observed exactly like this, or vanished meanwhile
                    continue
                if isinstance(found, _Refused):
                    events.append(rejections.record(invoice, entity, found.field, found.reason, raw=found.raw))
                    continue
                event = found
            else:
                event = InvoiceObserved(invoice=invoice, lines=[])
            key = dedupe_key(tenant.name, entity, changed.isoformat() if changed else None, to_dict(event))
            if invoice["Id"] in standing:  # observed again after a rejection: not the same as before it
                key += f"^{standing[invoice['Id']]}"
            events.append(NewEvent(tenant=tenant.name, entity=entity, event=event, dedupe_key=key))
        await writer.page(events)
        pages += 1
        seen += page.size
    requests = client.requests - requests_before
    return await _finish(writer, INVOICES_CURSOR, tenant, cursor, seen, pages, requests, rejections.count)


async def _standing_rejections(log: EventLog, tenant: TenantSettings) -> dict[str, int]:
    """Invoice id -> position of its rejection, for the rejected invoices not observed since: the flagged ones
    (their newest observation-or-rejection is a rejection; from the log's flags, not every rejection ever)."""
    out: dict[str, int] = {}
    flagged = await log.entities(
        [ObservationRejected.TYPE], tenant=tenant.name, newest_of=(*OBSERVED_TYPES, ObservationRejected.TYPE)
    )
    invoices = {entity for entity in flagged if entity.startswith("invoice:")}
    if not invoices:
        return out
    rejected = await log.latest([ObservationRejected.TYPE], tenant=tenant.name, entities=invoices)
    for (_, entity), stored in rejected.items():
        iid = _invoice_id(entity.removeprefix("invoice:"))
        if iid is not None:
            out[iid] = stored.position
    return out


@dataclass(frozen=True, slots=True)
class _Refused:
    """Why an invoice's details could not be read: the field at fault and the parser's reason."""

    field: str
    reason: str
    raw: str


def _paths(prefix: str, item: Unreadable) -> str:
    return ", ".join(f"{prefix}.{f}" for f in item.fields) if item.fields else prefix


async def _already_observed(log: EventLog, tenant: TenantSettings, invoice: JsonObject) -> bool:
    """Whether the latest stored observation of this invoice has the same header and its details (and no
    rejection came after it)."""
    entity = invoice_entity(invoice)
    types = [InvoiceObserved.TYPE, ObservationRejected.TYPE]
    latest = (await log.latest(types, tenant=tenant.name, entity=entity)).get((tenant.name, entity))
    if latest is None or not isinstance(latest.event, InvoiceObserved):
        return False
    previous = latest.event
    return previous.invoice == invoice and (bool(previous.lines) or previous.customer is not None)


async def _details(
    log: EventLog,
    client: TenantPowerOffice,
    tenant: TenantSettings,
    page: list[JsonObject],
    concurrency: int,
    *,
    first: bool,
) -> dict[str, InvoiceObserved | _Refused]:
    """Full observations (lines, customer, delivery addresses) for the page's would-be orders that need one,
    or why their details could not be read. `first`: no poll has completed yet, so nothing needs looking up."""
    wanted: list[JsonObject] = []
    for invoice in page:
        if not becomes_order(invoice, tenant):
            continue
        # One indexed look-up per would-be order of a delta: an invoice re-read in the overlap (or changed after
        # the last poll's capped cursor) costs no further request.
        if not first and await _already_observed(log, tenant, invoice):
            continue
        wanted.append(invoice)
    if not wanted:
        return {}

    numbers = {n for n in (_number(i.get("CustomerNo")) for i in wanted) if n is not None}
    customers = await client.customers_by_numbers(numbers) if numbers else Page()
    by_number: dict[int, JsonObject] = {}
    for customer in customers:
        number = _number(customer.get("Number"))
        if number is not None:
            by_number.setdefault(number, customer)
    contacts = {c for c in (_number(c.get("Id")) for c in by_number.values()) if c is not None}
    addresses = await client.delivery_addresses(contacts) if contacts else Page()
    by_contact: dict[int, list[JsonObject]] = {}
    for address in addresses:
        contact = _number(address.get("ContactId"))
        if contact is not None:
            by_contact.setdefault(contact, []).append(address)

    lines: dict[str, Page] = {}
    failures: list[Exception] = []
    limit = anyio.CapacityLimiter(max(1, concurrency))

    async def fetch(invoice: JsonObject, scope: anyio.CancelScope) -> None:
        async with limit:
            try:
                lines[invoice["Id"]] = await client.invoice_lines(invoice["Id"])
            except PermanentApiError as exc:
                if exc.status != 404 or isinstance(exc, AuthError):
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

    out: dict[str, InvoiceObserved | _Refused] = {}
    for invoice in wanted:
        invoice_lines = lines.get(invoice["Id"])
        if invoice_lines is None:
            continue
        number = _number(invoice.get("CustomerNo"))
        buyer = by_number.get(number) if number is not None else None
        contact = _number(buyer.get("Id")) if buyer is not None else None
        refused = _unreadable_details(invoice_lines, customers, addresses, number, buyer, contact)
        if refused is not None:
            out[invoice["Id"]] = refused
            continue
        out[invoice["Id"]] = InvoiceObserved(
            invoice=invoice,
            lines=list(invoice_lines),
            customer=buyer,
            delivery_addresses=_sorted(by_contact.get(contact, [])) if contact is not None else [],
        )
    return out


def _unreadable_details(
    lines: Page,
    customers: Page,
    addresses: Page,
    number: int | None,
    customer: JsonObject | None,
    contact: int | None,
) -> _Refused | None:
    """Why this invoice's snapshot would be incomplete, or None. A line that would not parse, the customer's
    record or one of its delivery addresses that would not parse (or one that might be its, when the parser
    could not even read whose it is) make the invoice a rejection: an order with a line or an address missing
    would ship the wrong goods or to the wrong place."""
    if lines.rejected:
        item = lines.rejected[0]
        return _Refused(_paths(f"Lines[{item.index}]", item), item.reason, item.raw)
    for item in customers.rejected:
        owner = _number(item.readable.get("Number"))
        if (owner is not None and owner == number) or (owner is None and customer is None and number is not None):
            return _Refused(_paths("customer", item), item.reason, item.raw)
    for item in addresses.rejected:
        owner = _number(item.readable.get("ContactId"))
        if (owner is not None and owner == contact) or (owner is None and contact is not None):
            return _Refused(_paths("delivery_addresses", item), item.reason, item.raw)
    return None


def _sorted(addresses: Iterable[JsonObject]) -> list[JsonObject]:
    """Primary address first, then by id: a stable order, so equal snapshots hash equally."""
    return sorted(addresses, key=lambda a: (a.get("IsPrimary") is not True, _order(a.get("Id"))))


def _order(value: object) -> tuple[int, int, str]:
    number = _number(value)
    return (0, number, "") if number is not None else (1, 0, orjson.dumps(value).decode())
