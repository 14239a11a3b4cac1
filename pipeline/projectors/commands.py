"""The projector: observed events → commands, through the pure mapping, checkpointed per tenant.

For each tenant it reads the observations after its checkpoint (`projector`), in batches, and for each one:

- `product.observed` → `article.upsert_requested` (entity `article:<Code>`), unless the tenant's filters leave
  the product out, or another product's latest observation has the same Code: then no product of that Code is
  sent, each gets a standing `mapping.failed` naming them all, until a Code changes or one is archived (an
  archived product yields to an unarchived one);
- `invoice.observed` → `order.upsert_requested` (entity `order:<invoice Id>`) when the invoice should become an
  order (paid by default; credit notes never). The order number is the invoice's own (`OrderNo`, else
  `InvoiceNo`) unless another invoice of the tenant already owns it: then `<OrderNo>-<InvoiceNo>`, recorded in
  the command's `renumbered_from`. A line with a product code is always an order line, and the order names the
  articles it waits for; a paid invoice with no goods to pick is an `observation.skipped`, never silence;
- `stock.observed` → `stock.patch_requested` (entity `stockback:<product Id>`) for products PowerOffice has as
  stock items, once the warehouse has held the article; otherwise an `observation.skipped` says why.

A record that cannot be mapped becomes a `mapping.failed` event naming the field; the rest of the batch flows.
A command equal to the entity's previous command is not appended, so re-observing an unchanged record (or
replaying it with an unchanged mapping) writes nothing. Commands and the checkpoint move land in one append.

`Projection` is the in-memory state the projector needs (previous commands, order-number owners, the article
registry, every product's latest observation); it is rebuilt from the log on every run that has something to
project, so nothing but the log is state. Orders grow with history, so a run loads only those its invoices need
(`Projection.load_orders`), never every order of the tenant. `project_event` is pure given that state (plus what
`Projection.learn` reads for a stock observation), which is what replay uses for its preview.
"""

from __future__ import annotations

import contextlib
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
from pipeline.mapping import MAPPING_VERSION, values
from pipeline.mapping.orders import (
    NothingToShip,
    fallback_order_number,
    invoice_wants_order,
    map_invoice,
    order_number_for,
)
from pipeline.mapping.products import map_product, product_excluded
from pipeline.mapping.stock import map_stock, warehouse_has_held

log = logging.getLogger(__name__)

STAGE = "projector"
OBSERVED = (ProductObserved.TYPE, InvoiceObserved.TYPE, StockObserved.TYPE)
COMMANDS = (ArticleUpsertRequested.TYPE, OrderUpsertRequested.TYPE, StockPatchRequested.TYPE)
# The commands whose entities grow with the catalogue (not with history, as orders do).
CATALOGUE_COMMANDS = (ArticleUpsertRequested.TYPE, StockPatchRequested.TYPE)
# The product fields `map_stock` reads.
STOCK_PRODUCT_FIELDS = ("Id", "Code", "IsStockItem")


def fingerprint(event: Event) -> str:
    """A stable digest of a command's content: equal commands, equal fingerprints."""
    return hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()[:32]


CODE_CONFLICT = "Code conflict"


@dataclass(slots=True)
class ProductClaim:
    """What the projector keeps of a product's latest observation: enough to own its Code and map stock."""

    position: int
    code: str | None
    archived: bool
    # Why the tenant's filters leave the product out (None: it is synced).
    left_out: str | None
    # Only the fields the stock mapping reads: a tenant may have tens of thousands of products.
    stock: dict[str, Any]

    @property
    def product_id(self) -> str:
        return str(self.stock.get("Id"))


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
    # product entity -> its latest observation (the newest the log holds, whatever has been projected yet)
    claims: dict[str, ProductClaim] = field(default_factory=dict)
    # product Code -> the product entities whose latest observation has it
    codes: dict[str, set[str]] = field(default_factory=dict)
    # article numbers whose stock the warehouse has shown it held (rule: no stock back before that)
    stock_held: set[str] = field(default_factory=set)
    _left_out: dict[str, str] | None = field(default=None, repr=False)
    # None: every order's last command is loaded. Else what `load_orders` has loaded so far: the order entities
    # and the order numbers whose holders are known.
    _orders: tuple[set[str], set[str]] | None = field(default=None, repr=False)

    @classmethod
    async def load(cls, log_: EventLog, tenant: TenantSettings, *, all_orders: bool = True) -> Projection:
        """The tenant's state from the log. With `all_orders=False` the orders (entities forever: they grow with
        history) are left out; `load_orders` then loads what each batch of observations needs. The catalogue's
        part (articles, stock write-backs, products) grows with the catalogue only and is loaded whole."""
        p = cls(tenant)
        types = COMMANDS if all_orders else CATALOGUE_COMMANDS
        latest = await log_.latest(types, tenant=tenant.name)
        for stored in sorted(latest.values(), key=lambda e: e.position):
            p.remember_command(stored.entity, stored.event)
        if not all_orders:
            p._orders = (set(), set())
        products = await log_.latest([ProductObserved.TYPE], tenant=tenant.name)
        for stored in products.values():
            assert isinstance(stored.event, ProductObserved)
            p.remember_product(stored.event.product, stored.event.group, entity=stored.entity, position=stored.position)
        # Stock already written back means the warehouse held the article: no need to read its history again.
        for entity in p.last_command:
            if entity.startswith("stockback:"):
                claim = p.claims.get("product:" + entity.removeprefix("stockback:"))
                if claim is not None and claim.code is not None:
                    p.stock_held.add(claim.code)
        return p

    async def load_orders(self, log_: EventLog, batch: Iterable[StoredEvent]) -> None:
        """Load what numbering the batch's invoices needs, when `load` left the orders out: each invoice's last
        order command, and the last order command of every order holding a number one of them has or would take.
        Together with the commands remembered since, that is all `order_number` and the dedupe read of orders,
        so projecting gives what a state with every order would."""
        if self._orders is None:
            return
        entities, numbers = self._orders
        name = self.tenant.name
        wanted: set[str] = set()
        own: set[str] = set()
        for stored in batch:
            ev = stored.event
            if not isinstance(ev, InvoiceObserved) or not isinstance(ev.invoice, dict):
                continue
            invoice_id = str(ev.invoice.get("Id") or "").strip()
            if invoice_id:
                wanted.add(f"order:{invoice_id}")
            with contextlib.suppress(MappingError):  # (projecting it fails, with the reason)
                own.add(order_number_for(ev.invoice))
        wanted -= entities
        found = await log_.latest([OrderUpsertRequested.TYPE], tenant=name, entities=wanted) if wanted else {}
        heads = {stored.position: stored for stored in found.values()}
        for stored in heads.values():
            held = stored.event.body.get("orderNumber") if isinstance(stored.event, OrderUpsertRequested) else None
            if isinstance(held, str):
                own.add(held)
        own -= numbers
        if own:
            heads.update((e.position, e) for e in await log_.order_commands_numbered(name, own))
        for position in sorted(heads):  # in log order, as `load` does: the oldest holder of a number owns it
            stored = heads[position]
            if stored.entity not in entities and stored.entity not in self.last_command:
                self.remember_command(stored.entity, stored.event)
        entities |= wanted | {e.entity for e in heads.values()}
        numbers |= own

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

    def remember_product(
        self,
        product: dict[str, Any],
        group: dict[str, Any] | None = None,
        *,
        entity: str | None = None,
        position: int = 0,
    ) -> None:
        """Record a product observation as its entity's claim, unless a newer one of that entity is known."""
        entity = entity or f"product:{product.get('Id')}"
        old = self.claims.get(entity)
        if old is not None and old.position > position:
            return
        code = _code(product)
        try:
            left_out = product_excluded(product, group, self.tenant)
        except MappingError:
            left_out = None  # its own observation fails to map; as a claim it is synced
        claim = ProductClaim(
            position,
            code,
            product.get("IsArchived") is True,
            left_out,
            {k: product.get(k) for k in STOCK_PRODUCT_FIELDS},
        )
        if old is not None and old.code is not None and old.code != code:
            holders = self.codes.get(old.code, set())
            holders.discard(entity)
            if not holders:
                self.codes.pop(old.code, None)
        self.claims[entity] = claim
        self._left_out = None
        if code is not None:
            self.codes.setdefault(code, set()).add(entity)

    @property
    def products(self) -> dict[str, dict[str, Any]]:
        """product Code -> the stock fields of the product that owns it (codes in conflict are left out)."""
        out: dict[str, dict[str, Any]] = {}
        for code in self.codes:
            owner = self.owner(code)
            if owner is not None:
                out[code] = self.claims[owner].stock
        return out

    def left_out(self) -> dict[str, str]:
        """product Code -> why the tenant's filters leave it out, for codes no synced product holds."""
        if self._left_out is None:
            out: dict[str, str] = {}
            for code, holders in self.codes.items():
                claims = [self.claims[e] for e in holders]
                if claims and all(c.left_out for c in claims):
                    out[code] = str(claims[0].left_out)
            self._left_out = out
        return self._left_out

    def contenders(self, code: str) -> list[str]:
        """The product entities that may own `code` as an article: synced ones, unarchived before archived."""
        synced = sorted(e for e in self.codes.get(code, ()) if not self.claims[e].left_out)
        live = [e for e in synced if not self.claims[e].archived]
        return live or synced

    def owner(self, code: str) -> str | None:
        """The one product entity that owns `code` (None: no product, or two or more in conflict)."""
        found = self.contenders(code)
        if len(found) == 1:
            return found[0]
        if not found:
            holders = sorted(self.codes.get(code, ()))
            return holders[0] if len(holders) == 1 else None
        return None

    def conflict(self, entity: str, code: str) -> list[str] | None:
        """The product entities in conflict over `code` when `entity` is one of them, else None."""
        found = self.contenders(code)
        return found if len(found) > 1 and entity in found else None

    def conflict_reason(self, code: str, parties: list[str]) -> str:
        ids = " and ".join(self.claims[e].product_id for e in parties)
        return (
            f"{CODE_CONFLICT}: products {ids} all have Code {code!r}; neither is sent to Ongoing until the conflict"
            " is resolved in PowerOffice (change one product's Code, or archive it)"
        )

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

    async def learn(self, log_: EventLog, stored: StoredEvent) -> None:
        """Read from the log what projecting `stored` needs beyond this state: for stock the warehouse shows
        empty, whether an earlier observation of the article showed it held. Call before `project_event`."""
        ev = stored.event
        if (
            not isinstance(ev, StockObserved)
            or self.tenant.stock_back_before_first_receipt
            or ev.article_number in self.stock_held
            or warehouse_has_held(ev.inventory)
        ):
            return
        async for earlier in log_.read(
            tenant=stored.tenant, entity=stored.entity, types=[StockObserved.TYPE], upto=stored.position - 1
        ):
            if isinstance(earlier.event, StockObserved) and warehouse_has_held(earlier.event.inventory):
                self.stock_held.add(ev.article_number)
                return


@dataclass(frozen=True, slots=True)
class Command:
    """The observation makes `event` for `entity`."""

    event: Event
    entity: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Failed:
    """The observation cannot be mapped: `failure` names the field."""

    failure: MappingFailed
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Skipped:
    """The observation makes no command, on purpose. `recorded`: whether an `observation.skipped` says so (not
    for an unpaid invoice, which says so itself)."""

    reason: str
    recorded: bool = True


Projected = Command | Failed | Skipped


def project_event(state: Projection, stored: StoredEvent) -> Projected:
    """Map one observation with the current mapping. Pure given `state`; does not change it. Never raises."""
    ev = stored.event
    tenant = state.tenant
    try:
        if isinstance(ev, ProductObserved):
            reason = product_excluded(ev.product, ev.group, tenant)
            if reason:
                return Skipped(reason)
            article = map_product(ev.product, ev.group, tenant)
            number = article.body["articleNumber"]
            parties = state.conflict(stored.entity, number)
            if parties:
                failure = MappingFailed(stored.position, "Code", state.conflict_reason(number, parties))
                return Failed(failure, article.warnings)
            owner = state.owner(number)
            if owner is not None and owner != stored.entity:
                other = state.claims[owner].product_id
                if ev.product.get("IsArchived") is True:
                    return Skipped(
                        f"archived, and product {other} (not archived) has the same Code {number!r}: the article is"
                        " that product's"
                    )
                return Skipped(f"product {other} holds the Code {number!r} now; this observation is not the latest")
            return Command(
                ArticleUpsertRequested(article.body, _int_or_none(ev.product.get("Id")), list(article.warnings)),
                f"article:{number}",
                article.warnings,
            )
        if isinstance(ev, InvoiceObserved):
            reason = invoice_wants_order(ev.invoice, tenant)
            if reason:
                return Skipped(reason, recorded=False)
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
                left_out=state.left_out(),
            )
            warnings = order.warnings
            if renumbered_from:
                warnings = (*warnings, f"order number {renumbered_from} belongs to another invoice: used {number}")
            return Command(
                OrderUpsertRequested(
                    order.body,
                    invoice_id,
                    list(order.article_numbers),
                    list(warnings),
                    renumbered_from=renumbered_from,
                ),
                f"order:{invoice_id}",
                warnings,
            )
        if isinstance(ev, StockObserved):
            code = ev.article_number
            owner = state.owner(code)
            if owner is None and len(state.codes.get(code, ())) > 1:
                parties = state.contenders(code) or sorted(state.codes[code])
                return Skipped(f"stock of {code}: {state.conflict_reason(code, parties)}")
            product = state.claims[owner].stock if owner is not None else None
            stock = map_stock(ev.inventory, product, tenant)
            if isinstance(stock, str):
                return Skipped(f"stock of {code}: {stock}")
            if not (
                tenant.stock_back_before_first_receipt or code in state.stock_held or warehouse_has_held(ev.inventory)
            ):
                return Skipped(
                    f"stock of {code}: the warehouse has not held the article yet (numberOfItems 0, no lastInDate):"
                    " PowerOffice's StockOnHand is left alone until the goods first arrive"
                )
            return Command(
                StockPatchRequested(stock.product_id, stock.product_code, stock.value),
                f"stockback:{stock.product_id}",
            )
        return Skipped(f"not an observation: {stored.type}")
    except NothingToShip as exc:
        return Skipped(f"nothing to ship: {exc.reason}")
    except MappingError as exc:
        return Failed(MappingFailed(stored.position, exc.field, exc.reason))


def _code(product: dict[str, Any]) -> str | None:
    try:
        return values.text(product, "Code", "Code")
    except MappingError:
        return None


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
    name = tenant.name
    after = await log_.checkpoint(STAGE, name)
    # Read up to the head seen now; once that is read the checkpoint moves to it, past the commands and outcomes
    # that follow the last observation, so the next quiet cycle has nothing to read at all.
    head = await log_.max_position()
    state: Projection | None = None  # loaded only when there is something to project: a quiet cycle reads no state
    batch: list[StoredEvent] = []
    async for stored in log_.read(after=after, upto=head, tenant=name, types=OBSERVED, batch_size=batch_size):
        batch.append(stored)
        if len(batch) >= batch_size:
            state = state or await Projection.load(log_, tenant, all_orders=False)
            await _project_batch(log_, state, batch, result)
            batch = []
    if batch:
        state = state or await Projection.load(log_, tenant, all_orders=False)
        await _project_batch(log_, state, batch, result)
    if state is not None:  # conflicts change only with new product observations
        await _settle_code_conflicts(log_, state, result)
    if head > after:
        await log_.append([], checkpoints={(STAGE, name): head})
    return result


def _outcome_events(name: str, stored: StoredEvent, done: Projected, key_suffix: str = "") -> list[NewEvent]:
    """The failure or recorded skip for a projected observation (commands are appended by the caller)."""
    if isinstance(done, Failed):
        return [
            NewEvent(
                name,
                stored.entity,
                done.failure,
                f"{name}/{stored.entity}/mapfail/{stored.position}/v{MAPPING_VERSION}{key_suffix}",
                causation=stored.position,
                mapping_version=MAPPING_VERSION,
            )
        ]
    if isinstance(done, Skipped) and done.recorded:
        return [
            NewEvent(
                name,
                stored.entity,
                ObservationSkipped(stored.position, done.reason),
                f"{name}/{stored.entity}/skip/{stored.position}/v{MAPPING_VERSION}{key_suffix}",
                causation=stored.position,
                mapping_version=MAPPING_VERSION,
            )
        ]
    return []


async def _project_batch(
    log_: EventLog, state: Projection, batch: Iterable[StoredEvent], result: ProjectResult
) -> None:
    out: list[NewEvent] = []
    last = 0
    name = state.tenant.name
    batch = list(batch)
    await state.load_orders(log_, batch)  # the orders this batch's invoices need, not every order of the tenant
    for stored in batch:
        last = stored.position
        result.observed += 1
        if isinstance(stored.event, ProductObserved):  # appended after the load: older ones are ignored
            ev = stored.event
            state.remember_product(ev.product, ev.group, entity=stored.entity, position=stored.position)
        await state.learn(log_, stored)
        done = project_event(state, stored)
        if isinstance(stored.event, StockObserved) and warehouse_has_held(stored.event.inventory):
            state.stock_held.add(stored.event.article_number)
        for warning in done.warnings if not isinstance(done, Skipped) else ():
            log.info("%s %s: %s", name, stored.entity, warning, extra={"tenant": name, "entity": stored.entity})
        if isinstance(done, Failed):
            result.failed += 1
            log.warning("%s %s: cannot map %s: %s", name, stored.entity, done.failure.field, done.failure.reason)
            out.extend(_outcome_events(name, stored, done))
            continue
        if isinstance(done, Skipped):
            result.skipped += 1
            log.debug("%s %s: no command: %s", name, stored.entity, done.reason)
            out.extend(_outcome_events(name, stored, done))
            continue
        fp = fingerprint(done.event)
        if state.last_command.get(done.entity) == fp:
            result.unchanged += 1
            continue
        state.remember_command(done.entity, done.event)
        result.commands += 1
        out.append(
            NewEvent(
                name,
                done.entity,
                done.event,
                command_dedupe_key(name, done.entity, stored.position, fp),
                causation=stored.position,
                mapping_version=MAPPING_VERSION,
            )
        )
    if last:
        await log_.append(out, checkpoints={(STAGE, name): last})


async def _settle_code_conflicts(log_: EventLog, state: Projection, result: ProjectResult) -> None:
    """Keep the standing `Code` conflicts true to the products' latest observations (rule: two products with one
    Code are a conflict). Every product in a conflict gets a standing `mapping.failed` naming all of them, also
    the one whose observation is older than the conflict; once the conflict is resolved in PowerOffice (a Code
    changed, a product archived), each product that stood in it is projected again from its latest observation,
    and what that makes (usually its article command) ends the failure."""
    name = state.tenant.name
    # Only products whose newest observation-or-mapping-failure is a failure (the flags, not every record that
    # ever failed to map): a standing failure is about the newest observation, so it is among them.
    flagged = await log_.entities([MappingFailed.TYPE], tenant=name, newest_of=(*OBSERVED, MappingFailed.TYPE))
    products = {entity for entity in flagged if entity.startswith("product:")}
    latest = await log_.latest([MappingFailed.TYPE], tenant=name, entities=products) if products else {}
    failed = {
        entity: stored
        for (_, entity), stored in latest.items()
        if entity.startswith("product:")
        and isinstance(stored.event, MappingFailed)
        and stored.event.reason.startswith(CODE_CONFLICT)
    }
    standing: set[str] = set()
    for entity, stored in failed.items():
        claim = state.claims.get(entity)
        assert isinstance(stored.event, MappingFailed)
        if claim is None or claim.position != stored.event.source:
            continue  # a newer observation of the product speaks for it now
        later = [e for e in await log_.caused_by([stored.event.source]) if e.position > stored.position]
        if not later:
            standing.add(entity)
    in_conflict: dict[str, list[str]] = {}
    for code, holders in state.codes.items():
        if len(holders) > 1:
            parties = state.contenders(code)
            if len(parties) > 1:
                for entity in parties:
                    in_conflict[entity] = parties
    out: list[NewEvent] = []
    for entity, parties in sorted(in_conflict.items()):
        if entity in standing:
            continue
        claim = state.claims[entity]
        code = claim.code or ""
        episode = max(state.claims[e].position for e in parties)
        failure = MappingFailed(claim.position, "Code", state.conflict_reason(code, parties))
        out.append(
            NewEvent(
                name,
                entity,
                failure,
                f"{name}/{entity}/mapfail/{claim.position}/v{MAPPING_VERSION}/conflict@{episode}",
                causation=claim.position,
                mapping_version=MAPPING_VERSION,
            )
        )
        result.failed += 1
    for entity in sorted(standing - set(in_conflict)):
        source = await log_.get(state.claims[entity].position)
        if source is None:
            continue
        done = project_event(state, source)
        suffix = f"/resolved@{failed[entity].position}"
        if isinstance(done, Command):
            fp = fingerprint(done.event)
            state.remember_command(done.entity, done.event)
            result.commands += 1
            out.append(
                NewEvent(
                    name,
                    done.entity,
                    done.event,
                    command_dedupe_key(name, done.entity, source.position, fp) + suffix,
                    causation=source.position,
                    mapping_version=MAPPING_VERSION,
                )
            )
        else:
            out.extend(_outcome_events(name, source, done, suffix))
    if out:
        await log_.append(out)
