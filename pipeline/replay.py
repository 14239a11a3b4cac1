"""Replay: re-project a window of observations with the current mapping, preview the difference, or apply it.

For every entity observed in `[window_from, window_to)` (optionally one tenant, one kind) whose newest observation
lies in the window, the projector's pure `project_event` runs on that observation against the state the log holds
now. (An entity observed again after the window is left alone: its newer observation is the truth, and replaying
the older one would send stale data.) Each resulting command is compared with the entity's latest command:

- equal → nothing to do;
- different → listed with a per-field diff; without `dry_run` it is appended (with the current mapping version
  and the observation as causation) for the senders to deliver;
- not mappable → listed with the field and reason; without `dry_run` recorded as `mapping.failed` (the projector's
  dedupe key), so `audit failures` shows it.

Orders already delivered are sent again only with `resend_orders`, and only those whose mapped body differs from
the body last delivered: those get a `force`d command (the sender refuses a delivered order otherwise, and never
touches one the warehouse has started on). An order that maps to what was delivered is never forced, so replay
cannot overwrite edits made in Ongoing with the same data. Every replay, dry or not, is recorded as a `replay.recorded`
event: who, which window, which mapping version, and the counts.
"""

from __future__ import annotations

import getpass
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from pipeline.config import Settings
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import (
    CommandSucceeded,
    InvoiceObserved,
    OrderUpsertRequested,
    ProductObserved,
    ReplayRecorded,
    StockObserved,
    to_dict,
)
from pipeline.mapping import MAPPING_VERSION
from pipeline.projectors.commands import (
    COMMANDS,
    Command,
    Failed,
    Projection,
    command_dedupe_key,
    fingerprint,
    project_event,
)

Kind = Literal["products", "orders", "stock"]
KIND_TYPES: dict[str, str] = {
    "products": ProductObserved.TYPE,
    "orders": InvoiceObserved.TYPE,
    "stock": StockObserved.TYPE,
}


@dataclass
class Change:
    tenant: str
    entity: str
    source: int
    fields: list[tuple[str, Any, Any]]  # (path, before, after)
    new: bool


@dataclass
class Failure:
    """An observation the current mapping cannot map: which entity, which observation, and why."""

    tenant: str
    entity: str
    source: int
    field: str
    reason: str


@dataclass
class ReplayReport:
    window_from: datetime
    window_to: datetime
    dry_run: bool
    observations: int = 0
    superseded: int = 0  # entities observed again after the window: their newer observation already counts
    unchanged: int = 0
    failed: int = 0
    skipped: int = 0
    appended: int = 0
    changes: list[Change] = field(default_factory=list)
    # Delivered orders whose mapped body differs from the delivered one: forced (with `resend_orders`) ...
    forced: list[str] = field(default_factory=list)
    # ... and delivered orders that map to exactly what was delivered: never forced.
    delivered_unchanged: int = 0
    # Changed orders never delivered (sent), and delivered ones changed but not forced (the sender skips them).
    orders_new: int = 0
    orders_not_resent: int = 0
    failures: list[Failure] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {
            "observations": self.observations,
            "superseded": self.superseded,
            "changed": len(self.changes),
            "unchanged": self.unchanged,
            "failed": self.failed,
            "skipped": self.skipped,
            "appended": self.appended,
            "forced": len(self.forced),
        }

    def next_cycle(self) -> str:
        """What the next `sync` (or `run` cycle) sends because of this replay, exactly."""
        if self.dry_run:
            verb, text = "would send", "dry run, nothing appended: applied, the next cycle"
        elif not self.appended:
            return "nothing appended: the next cycle sends nothing because of this replay"
        else:
            verb, text = "sends", f"{self.appended} command(s) appended: the next `pipeline sync` (or `run` cycle)"
        kinds: dict[str, int] = {}
        for change in self.changes:
            kind = change.entity.split(":", 1)[0]
            if kind != "order":
                kinds[kind] = kinds.get(kind, 0) + 1
        parts = [f"{n} {_KIND_NAMES.get(k, k)}" for k, n in sorted(kinds.items())]
        if self.orders_new:
            parts.append(f"{self.orders_new} order(s) not delivered before")
        if self.forced:
            shown = ", ".join(self.forced[:10]) + (", ..." if len(self.forced) > 10 else "")
            parts.append(
                f"{len(self.forced)} delivered order(s) again, forced because their mapped body changed ({shown}),"
                " except any the warehouse has started on"
            )
        text = f"{text} {verb} " + ("; ".join(parts) if parts else "nothing")
        if self.orders_not_resent:
            text += (
                f"; {self.orders_not_resent} delivered order(s) whose mapping changed are not re-sent"
                " (--resend-orders forces them)"
            )
        if self.delivered_unchanged:
            text += f"; {self.delivered_unchanged} delivered order(s) map to what was delivered and are not re-sent"
        return text


_KIND_NAMES = {"article": "article upsert(s)", "stockback": "stock figure(s) to PowerOffice"}


def diff(before: Any, after: Any, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON values, as (path, before, after)."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(set(before) | set(after), key=str):
            yield from diff(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
    elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (b, a) in enumerate(zip(before, after, strict=True)):
            yield from diff(b, a, f"{path}[{i}]")
    elif before != after:
        yield path or "<root>", before, after


async def replay(
    log: EventLog,
    settings: Settings,
    *,
    window_from: datetime,
    window_to: datetime,
    tenant: str | None = None,
    kind: Kind | None = None,
    dry_run: bool = True,
    resend_orders: bool = False,
    by: str | None = None,
) -> ReplayReport:
    """Re-project the window. Raises KeyError for an unknown tenant, StoreError if the log fails."""
    tenants = [settings.tenant(tenant)] if tenant else list(settings.tenants)
    types = [KIND_TYPES[kind]] if kind else list(KIND_TYPES.values())
    report = ReplayReport(window_from, window_to, dry_run)
    for t in tenants:
        state = await Projection.load(log, t)
        latest: dict[str, StoredEvent] = {
            entity: e for (_, entity), e in (await log.latest(COMMANDS, tenant=t.name)).items()
        }
        newest = {entity: e.position for (_, entity), e in (await log.latest(types, tenant=t.name)).items()}
        delivered: dict[str, StoredEvent] = {
            entity: e
            for (_, entity), e in (await log.latest([CommandSucceeded.TYPE], tenant=t.name)).items()
            if entity.startswith("order:")
        }
        # Only an entity's newest observation speaks for it: replaying an older one would send stale data back.
        window: dict[str, StoredEvent] = {}
        async for stored in log.read(tenant=t.name, types=types, since=window_from, until=window_to):
            report.observations += 1
            window[stored.entity] = stored
        out: list[NewEvent] = []
        failed: list[NewEvent] = []
        for stored in sorted(window.values(), key=lambda e: e.position):
            if newest.get(stored.entity) != stored.position:
                report.superseded += 1
                continue
            await state.learn(log, stored)
            done = project_event(state, stored)
            if isinstance(done, Failed):
                report.failed += 1
                report.failures.append(
                    Failure(t.name, stored.entity, stored.position, done.failure.field, done.failure.reason)
                )
                if not dry_run:  # recorded as the projector would, so `audit failures` lists it too
                    failed.append(
                        NewEvent(
                            t.name,
                            stored.entity,
                            done.failure,
                            f"{t.name}/{stored.entity}/mapfail/{stored.position}/v{MAPPING_VERSION}",
                            causation=stored.position,
                            mapping_version=MAPPING_VERSION,
                        )
                    )
                continue
            if not isinstance(done, Command):
                report.skipped += 1
                continue
            command = done.event
            order_kind = "new"
            if isinstance(command, OrderUpsertRequested) and done.entity in delivered:
                body = await _delivered_body(log, delivered[done.entity])
                if body is not None and body == command.body:
                    report.delivered_unchanged += 1
                    order_kind = "same"
                elif resend_orders:
                    command = replace(command, force=True)
                    order_kind = "forced"
                else:
                    order_kind = "held"
            previous = latest.get(done.entity)
            before = to_dict(previous.event) if previous else {}
            after = to_dict(command)
            if previous is not None and fingerprint(previous.event) == fingerprint(command):
                report.unchanged += 1
                continue
            report.changes.append(Change(t.name, done.entity, stored.position, list(diff(before, after)), not previous))
            if isinstance(command, OrderUpsertRequested):
                if order_kind == "forced":
                    report.forced.append(done.entity)
                elif order_kind == "new":
                    report.orders_new += 1
                elif order_kind == "held":
                    report.orders_not_resent += 1
            if not dry_run:
                fp = fingerprint(command)
                out.append(
                    NewEvent(
                        t.name,
                        done.entity,
                        command,
                        command_dedupe_key(t.name, done.entity, stored.position, fp) + "/replay",
                        causation=stored.position,
                        mapping_version=MAPPING_VERSION,
                    )
                )
                state.remember_command(done.entity, command)
        if out:
            result = await log.append(out)
            report.appended += result.appended
        if failed:
            await log.append(failed)
    record = ReplayRecorded(
        by=by or _who(),
        window_from=window_from.isoformat(),
        window_to=window_to.isoformat(),
        kind=kind,
        mapping_version=MAPPING_VERSION,
        dry_run=dry_run,
        counts=report.counts(),
    )
    stamp = f"{record.by}/{record.window_from}/{record.window_to}/{tenant}/{kind}/{await log.max_position()}"
    await log.append([NewEvent(tenant or "*", "replay", record, f"replay/{stamp}/{dry_run}")])
    return report


async def _delivered_body(log: EventLog, success: StoredEvent) -> dict[str, Any] | None:
    """The body of the order command that `success` delivered."""
    if not isinstance(success.event, CommandSucceeded):
        return None
    command = await log.get(success.event.command)
    if command is None or not isinstance(command.event, OrderUpsertRequested):
        return None
    return command.event.body


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
