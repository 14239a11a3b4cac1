"""The projector: observed events → commands, through the pure mapping, checkpointed per tenant.

For each tenant it reads the observations after its checkpoint (`projector`), in batches, and for each one:

- `product.observed` → `article.upsert_requested` (entity `article:<Code>`), unless the tenant's filters leave
  the product out;
- `invoice.observed` → `order.upsert_requested` (entity `order:<invoice Id>`) when the invoice should become an
  order (paid by default; credit notes never). The order number is the invoice's own (`OrderNo`, else
  `InvoiceNo`) unless another invoice of the tenant already owns it: then `<OrderNo>-<InvoiceNo>`, recorded in
  the command's `renumbered_from`;
- `stock.observed` → `stock.patch_requested` (entity `stockback:<product Id>`) for products PowerOffice has as
  stock items; others are skipped (logged, no command).

A record that cannot be mapped becomes a `mapping.failed` event naming the field; the rest of the batch flows.
A command equal to the entity's previous command is not appended, so re-observing an unchanged record (or
replaying it with an unchanged mapping) writes nothing. Commands and the checkpoint move land in one append.

`Projection` is the in-memory state the projector needs (previous commands, order-number owners, the article
registry, the product index for stock); it is rebuilt from the log on every run, so nothing but the log is
state. `project_event` is pure given that state, which is what replay uses for its preview.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from pipeline.config import TenantSettings
from pipeline.errors import MappingError
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import (
    ArticleUpsertRequested,
    Event,
    InvoiceObserved,
    MappingFailed,
    ObservationSkipped,
    OrderUpsertRequested,
    ProductObserved,
    StockObserved,
    StockPatchRequested,
)
from pipeline.mapping import MAPPING_VERSION
from pipeline.mapping.orders import (
    NothingToShip,
    fallback_order_number,
    invoice_wants_order,
    map_invoice,
    order_number_for,
)
from pipeline.mapping.products import map_product, product_excluded
from pipeline.mapping.stock import map_stock

log = logging.getLogger(__name__)

STAGE = "projector"
OBSERVED = (ProductObserved.TYPE, InvoiceObserved.TYPE, StockObserved.TYPE)
COMMANDS = (ArticleUpsertRequested.TYPE, OrderUpsertRequested.TYPE, StockPatchRequested.TYPE)
# The product fields `map_stock` reads.
STOCK_PRODUCT_FIELDS = ("Id", "Code", "IsStockItem")


def fingerprint(event: Event) -> str:
    """A stable digest of a command's content: equal commands, equal fingerprints."""
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


@dataclass
class Projection:
    """What the projector knows about one tenant, rebuilt from the log."""

    tenant: TenantSettings
    # entity -> fingerprint of its latest command
    last_command: dict[str, str] = field(default_factory=dict)
    # order number -> invoice id that owns it
    order_numbers: dict[str, str] = field(default_factory=dict)
    # invoice id -> the order number it was given (stable across re-projections)
    invoice_numbers: dict[str, str] = field(default_factory=dict)
    # article numbers the tenant's registry holds (every article command so far)
    articles: set[str] = field(default_factory=set)
    # product Code -> latest raw product, for the stock write-back
    products: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    async def load(cls, log_: EventLog, tenant: TenantSettings) -> Projection:
        p = cls(tenant)
        latest = await log_.latest(COMMANDS, tenant=tenant.name)
        for stored in sorted(latest.values(), key=lambda e: e.position):
            p.remember_command(stored.entity, stored.event)
        products = await log_.latest([ProductObserved.TYPE], tenant=tenant.name)
        for stored in products.values():
            assert isinstance(stored.event, ProductObserved)
            p.remember_product(stored.event.product)
        return p

    def remember_command(self, entity: str, event: Event) -> None:
        self.last_command[entity] = fingerprint(event)
        if isinstance(event, ArticleUpsertRequested):
            number = event.body.get("articleNumber")
            if isinstance(number, str):
                self.articles.add(number)
        elif isinstance(event, OrderUpsertRequested):
            number = event.body.get("orderNumber")
            if isinstance(number, str):
                self.order_numbers.setdefault(number, event.invoice_id)
                self.invoice_numbers[event.invoice_id] = number

    def remember_product(self, product: dict[str, Any]) -> None:
        code = product.get("Code")
        if isinstance(code, str) and code.strip():
            # Only what the stock mapping reads: a tenant may have tens of thousands of products.
            self.products[code.strip()] = {k: product.get(k) for k in STOCK_PRODUCT_FIELDS}

    def order_number(self, invoice: dict[str, Any], invoice_id: str) -> tuple[str, str | None]:
        """The order number for an invoice, and the number it could not have (None when not renumbered)."""
        if invoice_id in self.invoice_numbers:
            number = self.invoice_numbers[invoice_id]
            own = order_number_for(invoice)
            return number, (own if number != own else None)
        own = order_number_for(invoice)
        owner = self.order_numbers.get(own)
        if owner is None or owner == invoice_id:
            return own, None
        return fallback_order_number(invoice), own


@dataclass
class Projected:
    """What projecting one observation produced."""

    command: Event | None = None
    entity: str | None = None
    failure: MappingFailed | None = None
    skipped: str | None = None
    warnings: tuple[str, ...] = ()


def project_event(state: Projection, stored: StoredEvent) -> Projected:
    """Map one observation with the current mapping. Pure given `state`; does not change it. Never raises."""
    ev = stored.event
    tenant = state.tenant
    try:
        if isinstance(ev, ProductObserved):
            reason = product_excluded(ev.product, ev.group, tenant)
            if reason:
                return Projected(skipped=reason)
            article = map_product(ev.product, ev.group, tenant)
            number = article.body["articleNumber"]
            return Projected(
                ArticleUpsertRequested(article.body, _int_or_none(ev.product.get("Id")), list(article.warnings)),
                f"article:{number}",
                warnings=article.warnings,
            )
        if isinstance(ev, InvoiceObserved):
            reason = invoice_wants_order(ev.invoice, tenant)
            if reason:
                return Projected(skipped=reason)
            invoice_id = str(ev.invoice.get("Id") or "").strip()
            if not invoice_id:
                raise MappingError("Id", "the invoice has no Id")
            number, renumbered_from = state.order_number(ev.invoice, invoice_id)
            order = map_invoice(
                ev.invoice,
                ev.lines,
                ev.customer,
                ev.delivery_addresses,
                tenant,
                order_number=number,
                observed_on=_observed_on(stored),
                known_articles=state.articles,
            )
            warnings = order.warnings
            if renumbered_from:
                warnings = (*warnings, f"order number {renumbered_from} belongs to another invoice: used {number}")
            return Projected(
                OrderUpsertRequested(
                    order.body,
                    invoice_id,
                    list(order.article_numbers),
                    list(warnings),
                    renumbered_from=renumbered_from,
                ),
                f"order:{invoice_id}",
                warnings=warnings,
            )
        if isinstance(ev, StockObserved):
            product = state.products.get(ev.article_number)
            stock = map_stock(ev.inventory, product, tenant)
            if isinstance(stock, str):
                return Projected(skipped=f"stock of {ev.article_number}: {stock}")
            return Projected(
                StockPatchRequested(stock.product_id, stock.product_code, stock.value),
                f"stockback:{stock.product_id}",
            )
        return Projected(skipped=f"not an observation: {stored.type}")
    except NothingToShip as exc:
        return Projected(skipped=f"nothing to ship: {exc}")
    except MappingError as exc:
        return Projected(failure=MappingFailed(stored.position, exc.field, exc.reason))


def _observed_on(stored: StoredEvent) -> date:
    return stored.recorded_at.date()


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass
class ProjectResult:
    observed: int = 0
    commands: int = 0
    unchanged: int = 0
    skipped: int = 0
    failed: int = 0


def command_dedupe_key(tenant: str, entity: str, source: int, fp: str) -> str:
    return f"{tenant}/{entity}/cmd/{source}/{fp[:16]}"


async def project(log_: EventLog, tenant: TenantSettings, *, batch_size: int = 500) -> ProjectResult:
    """Project the tenant's new observations into commands. Raises StoreError if the log fails."""
    result = ProjectResult()
    after = await log_.checkpoint(STAGE, tenant.name)
    state: Projection | None = None  # loaded only when there is something to project: a quiet cycle reads no state
    batch: list[StoredEvent] = []
    async for stored in log_.read(after=after, tenant=tenant.name, types=OBSERVED, batch_size=batch_size):
        batch.append(stored)
        if len(batch) >= batch_size:
            state = state or await Projection.load(log_, tenant)
            await _project_batch(log_, state, batch, result)
            batch = []
    if batch:
        state = state or await Projection.load(log_, tenant)
        await _project_batch(log_, state, batch, result)
    return result


async def _project_batch(
    log_: EventLog, state: Projection, batch: Iterable[StoredEvent], result: ProjectResult
) -> None:
    out: list[NewEvent] = []
    last = 0
    name = state.tenant.name
    for stored in batch:
        last = stored.position
        result.observed += 1
        if isinstance(stored.event, ProductObserved):
            state.remember_product(stored.event.product)
        done = project_event(state, stored)
        for warning in done.warnings:
            log.warning("%s %s: %s", name, stored.entity, warning)
        if done.failure is not None:
            result.failed += 1
            log.warning("%s %s: cannot map %s: %s", name, stored.entity, done.failure.field, done.failure.reason)
            out.append(
                NewEvent(
                    name,
                    stored.entity,
                    done.failure,
                    f"{name}/{stored.entity}/mapfail/{stored.position}/v{MAPPING_VERSION}",
                    causation=stored.position,
                    mapping_version=MAPPING_VERSION,
                )
            )
            continue
        if done.command is None or done.entity is None:
            result.skipped += 1
            if done.skipped:
                log.debug("%s %s: no command: %s", name, stored.entity, done.skipped)
                if not isinstance(stored.event, InvoiceObserved):
                    # Recorded for audit. (Not for invoices: most are simply unpaid, and say so themselves.)
                    out.append(
                        NewEvent(
                            name,
                            stored.entity,
                            ObservationSkipped(stored.position, done.skipped),
                            f"{name}/{stored.entity}/skip/{stored.position}/v{MAPPING_VERSION}",
                            causation=stored.position,
                            mapping_version=MAPPING_VERSION,
                        )
                    )
            continue
        fp = fingerprint(done.command)
        if state.last_command.get(done.entity) == fp:
            result.unchanged += 1
            continue
        state.remember_command(done.entity, done.command)
        result.commands += 1
        out.append(
            NewEvent(
                name,
                done.entity,
                done.command,
                command_dedupe_key(name, done.entity, stored.position, fp),
                causation=stored.position,
                mapping_version=MAPPING_VERSION,
            )
        )
    if last:
        await log_.append(out, checkpoints={(STAGE, name): last})
