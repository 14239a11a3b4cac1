"""What each CLI command does, given parsed arguments and settings. Returns the process exit code."""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from rich.console import Console

from pipeline import audit as audit_
from pipeline import console as out
from pipeline.config import Settings, reload_settings
from pipeline.errors import ConfigError, PipelineError
from pipeline.eventlog import open_log
from pipeline.eventlog.base import EventLog, NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import OUTCOME_TYPES, CommandFailed, EntityRedriven
from pipeline.logs import log_cycle, log_tenant_cycle
from pipeline.replay import Kind
from pipeline.replay import replay as replay_
from pipeline.runtime import EXIT_CYCLE_FAILED, CycleReport, Runtime, TenantState, describe_failure, fatal_error

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog
    from pipeline.runtime import TenantReport
    from pipeline.web import Status

log = logging.getLogger(__name__)

ACTIVITY_INTERVAL = 10.0  # interval_seconds in the config `fakes --activity --write-config` writes


async def _cycle(console: Console, runtime: Runtime, title: str) -> CycleReport:
    before = await runtime.log.max_position()
    if console.is_terminal:
        with console.status(f"{title}: starting") as status:
            report = await runtime.cycle(lambda stage: status.update(f"{title}: {stage}"))
    else:
        report = await runtime.cycle(lambda stage: console.print(f"{title}: {stage}"))
    await _account(runtime, report, before)
    out.print_cycle(console, report, title)
    return report


async def _account(runtime: Runtime, report: CycleReport, before: int) -> None:
    """Add the cycle's `observation.skipped` to its skipped counts, and log its summary lines."""
    for tenant, n in (await audit_.observation_skips(runtime.log, before)).items():
        if tenant in report.tenants:
            report.tenants[tenant].skipped += n
    log_cycle(report, datetime.now(UTC))


async def sync(
    console: Console, settings: Settings, *, wrap_log: Callable[[SqliteEventLog], EventLog] | None = None
) -> int:
    """One cycle of every tenant. Exit 3 (with one line on stderr per failure) when a tenant's cycle failed.
    `wrap_log` wraps the log (tests inject faults with it)."""
    async with Runtime(settings, command="sync", wrap_log=wrap_log) as runtime:
        try:
            report = await _cycle(console, runtime, "sync")
        except Exception as exc:  # the cycle reports failures itself; this is the last net, never a traceback
            if fatal_error(exc) is not None:
                raise
            print(f"error: sync failed: {describe_failure(exc)}", file=sys.stderr)
            return EXIT_CYCLE_FAILED
    failed: dict[str, list[str]] = {}
    for t in report.tenants.values():
        if t.cycle_error is not None:
            failed.setdefault(t.cycle_error, []).append(t.name)
    for error, names in failed.items():
        print(f"error: the cycle failed for {', '.join(names)}: {error}", file=sys.stderr)
    return report.exit_code


async def run_forever(
    console: Console,
    settings: Settings,
    signals: Sequence[signal.Signals] = (),
    *,
    stop: anyio.Event | None = None,
    started: Callable[[str], None] | None = None,
    cycled: Callable[[TenantState], None] | None = None,
    cycles: int | None = None,
    interval: float | None = None,
    clock: Callable[[], datetime] | None = None,
    wrap_log: Callable[[SqliteEventLog], EventLog] | None = None,
    status: Status | None = None,
    hangup: signal.Signals | None = None,
) -> int:
    """Every tenant's loop (a cycle every interval, see `pipeline.runtime`) until one of `signals` arrives (or
    `stop` is set); each running cycle finishes first. Serves /readyz (= /healthz), /metrics and a status page at
    `status_host:status_port` meanwhile. A failed cycle is shown and counted, and the loop goes on.

    `cycled` hears each tenant's state after each cycle. Tests bound the run with `cycles` (per tenant), replace
    every tenant's `interval`, inject the `clock`, wrap the log (`wrap_log`) to inject faults, and may pass the
    `status` to record in. `hangup` (SIGHUP) reloads the config file: see `Reloads`."""
    from pipeline.web import Status, serve

    stop = stop or anyio.Event()
    clock = clock or (lambda: datetime.now(UTC))
    status = status or Status(
        settings.interval_seconds,
        clock,
        tenants=[t.name for t in settings.tenants],
        requests_per_second=settings.poweroffice.requests_per_second,
    )

    def record(state: TenantState) -> None:
        status.record_tenant(state)
        if state.report is not None and state.last_started is not None and state.last_ended is not None:
            log_tenant_cycle(state.report, (state.last_ended - state.last_started).total_seconds())
        if state.report is not None and not _quiet(state.report):  # a table costs ms: a thousand tenants, seconds
            out.print_cycle(console, CycleReport(state.last_started or clock(), {state.name: state.report}), "cycle")
        if state.report is not None and state.report.cycle_error is not None:
            console.print(f"{state.name}: cycle failed: {state.last_error}", markup=False, highlight=False)
        if cycled:
            cycled(state)

    def begin(tenant: str) -> None:
        status.cycle_started(clock(), [tenant])

    async def watch() -> None:
        with anyio.open_signal_receiver(*signals) as received:
            async for signum in received:
                console.print(f"{signal.Signals(signum).name}: finishing the current cycle, then stopping")
                stop.set()
                return

    try:
        async with (
            Runtime(settings, clock=clock, command="run", wrap_log=wrap_log) as runtime,
            _status_server(serve(status, settings.status_host, settings.status_port), settings) as url,
            anyio.create_task_group() as tg,
        ):
            console.print(f"status: {url}/  health: {url}/livez {url}/readyz  metrics: {url}/metrics")
            await status.attach(runtime.store, runtime.poweroffice.limiter)
            workers = runtime.workers
            if workers is not None:  # PostgreSQL: the page and /readyz name who holds each tenant
                status.attach_workers(lambda: workers.board)
            if started:
                started(url)
            if signals:
                tg.start_soon(watch)
            reloads = Reloads(runtime)
            if hangup is not None:
                tg.start_soon(reloads.watch, hangup)
            while True:
                # One epoch per configuration: a reload ends it (each tenant finishes its cycle in progress), then
                # the loops start again with the new tenants and interval.
                epoch = reloads.epoch = anyio.Event()
                async with anyio.create_task_group() as relay:
                    relay.start_soon(_relay, stop, epoch)
                    await runtime.run(epoch, cycles=cycles, interval=interval, on_cycle=record, on_start=begin)
                    relay.cancel_scope.cancel()
                if stop.is_set() or not reloads.apply():
                    break
                status.set_tenants(list(runtime.states))
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:  # the task group wraps what ends `run`: hand the CLI the error itself
        fatal = fatal_error(group)
        if fatal is not None:
            raise fatal from None
        raise
    finally:
        status.detach()
    return 0


def _quiet(report: TenantReport) -> bool:
    """The cycle read nothing new, queued, sent or skipped nothing, and nothing waits, failed or stands."""
    counts = (report.observed, report.commands, report.delivered, report.skipped, report.failed, report.waiting)
    return report.result == "ok" and not any(counts) and not report.degraded and not report.deadline_reached


async def _relay(stop: anyio.Event, epoch: anyio.Event) -> None:
    await stop.wait()
    epoch.set()


class Reloads:
    """SIGHUP in `run`: read the config file again. Tenants added or removed and a new interval apply at once:
    each tenant finishes its cycle in progress, then every loop starts again with the new settings. Other changes
    are logged as needing a restart; an invalid file is refused (its problems logged) and the running config kept."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.pending: Settings | None = None
        self.epoch: anyio.Event | None = None

    async def watch(self, signum: signal.Signals) -> None:
        with anyio.open_signal_receiver(signum) as received:
            async for _ in received:
                self.reload()

    def reload(self) -> None:
        try:
            fresh, notes = reload_settings(self.pending or self.runtime.settings)
        except ConfigError as exc:
            log.error("reload refused, the running config stays: %s", exc)
            return
        for note in notes:
            log.warning("reload: %s", note)
        log.info("reload: %d tenant(s); their next cycle starts once the current ones end", len(fresh.tenants))
        self.pending = fresh
        if self.epoch is not None:
            self.epoch.set()

    def apply(self) -> bool:
        """Between epochs only (no cycle runs): use the pending settings. Returns whether there were any."""
        if self.pending is None:
            return False
        self.runtime.apply_settings(self.pending)
        self.pending = None
        return True


@asynccontextmanager
async def _status_server(server: AbstractAsyncContextManager[str], settings: Settings) -> AsyncIterator[str]:
    """The status server; failing to listen is one line naming the key to change, not a traceback (exit 2)."""
    try:
        url = await server.__aenter__()
    except OSError as exc:
        bad_host = isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
        key = f"status_host = {settings.status_host!r}" if bad_host else f"status_port = {settings.status_port}"
        where = f"{settings.status_host}:{settings.status_port}"
        raise PipelineError(
            f"{settings.source or 'config'}: {key}: cannot listen on {where}: {exc.strerror or exc}"
            " (choose a free port, or 0 for any)"
        ) from None
    try:
        yield url
    except BaseException as exc:
        if not await server.__aexit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        await server.__aexit__(None, None, None)


async def replay(
    console: Console,
    settings: Settings,
    window: tuple[datetime, datetime],
    *,
    tenant: str | None,
    kind: Kind | None,
    dry_run: bool,
    resend_orders: bool,
) -> int:
    async with await open_log(settings.database, mode="existing") as log_:
        report = await replay_(
            log_,
            settings,
            window_from=window[0],
            window_to=window[1],
            tenant=tenant,
            kind=kind,
            dry_run=dry_run,
            resend_orders=resend_orders,
        )
    out.print_replay(console, report)
    console.print(report.next_cycle(), markup=False, highlight=False)
    return 0


async def audit(console: Console, settings: Settings, args: argparse.Namespace) -> int:
    async with await open_log(settings.database, mode="existing") as log_:
        tenant = getattr(args, "tenant", None)
        if tenant is not None:
            await _known_tenant(log_, settings, tenant)
        if args.audit == "history":
            entities = await audit_.resolve(log_, args.tenant, args.entity)
            if not entities:
                raise ConfigError(
                    [f"{args.tenant} has no entity, SKU, order number or invoice number {args.entity!r} in the log"],
                    "command line",
                )
            out.print_rows(console, await audit_.histories(log_, args.tenant, entities), as_json=args.json)
        elif args.audit == "lineage":
            rows = await audit_.lineage(log_, args.position)
            if not rows:
                raise ConfigError([f"no event at position {args.position}"], "command line")
            out.print_rows(console, rows, as_json=args.json)
        elif args.audit == "failures":
            rows = await audit_.failures(log_, args.tenant)
            out.print_rows(console, rows, as_json=args.json)
            return 1 if rows else 0
        elif args.audit == "stats":
            out.print_table(console, ("tenant", "type", "events"), await audit_.stats(log_), as_json=args.json)
            if not args.json:  # the JSON answer stays the counts; /metrics has the freshness for machines
                from pipeline import freshness

                samples = await freshness.from_log(log_, since=getattr(args, "since", None))
                console.print("delivery freshness (answer time − source change time)")
                out.print_table(console, freshness.HEADER, freshness.summarize(samples), as_json=False)
        elif args.audit == "sql":
            header, result = await audit_.sql(log_, args.query, timeout=args.timeout)
            out.print_table(console, header, result, as_json=args.json)
    return 0


async def _known_tenant(log_: AnyLog, settings: Settings, tenant: str) -> None:
    """A tenant of the config, or one the log still holds events of; anything else is a typing error."""
    if tenant in {t.name for t in settings.tenants} or tenant in await audit_.tenants(log_):
        return
    names = ", ".join(t.name for t in settings.tenants)
    raise ConfigError([f"no tenant named {tenant!r} (the config has: {names})"], "command line")


async def redrive(console: Console, settings: Settings, tenant: str, entity: str, reason: str) -> int:
    """Release a quarantined entity. Refuses an unknown tenant or entity, and an entity that is not quarantined."""
    if tenant not in {t.name for t in settings.tenants}:
        names = ", ".join(t.name for t in settings.tenants)
        raise ConfigError([f"no tenant named {tenant!r} (the config has: {names})"], "command line")
    async with await open_log(settings.database, mode="existing") as log_:
        if not await log_.query("SELECT 1 FROM events WHERE tenant = ? AND entity = ? LIMIT 1", (tenant, entity)):
            raise ConfigError(
                [f"{tenant} has no entity {entity!r} in the log (`pipeline audit failures` lists the quarantined)"],
                "command line",
            )
        marks = await log_.latest([*OUTCOME_TYPES, EntityRedriven.TYPE], tenant=tenant, entity=entity)
        mark = marks.get((tenant, entity))
        if mark is None or not (isinstance(mark.event, CommandFailed) and mark.event.permanent):
            last = f"its last outcome is #{mark.position} {mark.type}" if mark else "it has no outcome yet"
            raise ConfigError([f"{tenant} {entity} is not quarantined ({last}); nothing to release"], "command line")
        stamp = await log_.max_position()
        event = EntityRedriven(reason=reason, by="operator")
        await log_.append([NewEvent(tenant, entity, event, f"{tenant}/{entity}/redrive/{stamp}")])
    console.print(f"{tenant} {entity}: released; the next sync sends its latest command", markup=False, highlight=False)
    return 0


async def serve_fakes(
    console: Console,
    host: str,
    po_port: int,
    wms_port: int,
    tenants: int,
    write_config: str | None,
    activity_every: float | None = None,
    seed: int = 2026,
) -> int:
    """Serve both fakes until SIGINT/SIGTERM; with `activity_every`, change the world every that many seconds."""
    from pipeline.fakes.world import fake_world

    async with fake_world(tenants, host=host, poweroffice_port=po_port, ongoing_port=wms_port) as world:
        console.print(
            f"PowerOffice Go (fake): {world.poweroffice_origin}/v2  token: {world.poweroffice_origin}/OAuth/Token"
        )
        console.print(f"Ongoing WMS (fake):    {world.ongoing_url}")
        for t in world.tenants:
            console.print(f"  tenant {t.name}: client key {t.client_key}, goods owner {t.goods_owner_id}")
        if write_config:
            # With activity, cycles follow the changes closely: a moving world shows in `run` within a minute.
            interval = ACTIVITY_INTERVAL if activity_every is not None else None
            _write(Path(write_config), world.config_toml("pipeline.db", interval_seconds=interval))
            console.print(f"config written to {write_config}: pipeline --config {write_config} sync")
        console.print("serving until Ctrl-C")
        async with anyio.create_task_group() as tg:
            if activity_every is not None:
                tg.start_soon(_move_world, console, world, activity_every, seed)
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
                async for _ in received:
                    break
            tg.cancel_scope.cancel()
    return 0


async def _move_world(console: Console, world: Any, every: float, seed: int) -> None:
    from pipeline.fakes.activity import Activity

    activity = Activity(world, datetime.now(UTC), seed=seed, every=timedelta(seconds=every))
    console.print(f"activity: a change every {every:g} s (seed {seed})")
    while True:
        for c in activity.tick(datetime.now(UTC)):
            console.print(f"  {c.at:%H:%M:%S} {c.tenant}: {c.words}", markup=False, highlight=False)
        await anyio.sleep(min(1.0, every))


async def demo(console: Console, directory: str) -> int:
    """Both fakes in-process, three goods owners, a full sync, a few changes, another sync, then what to try."""
    from pipeline.fakes.world import fake_world

    folder = _fresh_folder(directory)
    database = folder / "pipeline.db"
    started = datetime.now(UTC)
    async with fake_world(3, products=40, customers=15, invoices=40) as world:
        settings = world.settings(database)
        console.rule("pipeline demo")
        console.print(
            f"Fake PowerOffice Go at {world.poweroffice_origin}, fake Ongoing WMS at {world.ongoing_url};"
            f" {len(world.tenants)} goods owners with generated companies."
        )
        async with Runtime(settings, command="demo") as runtime:
            first = await _cycle(console, runtime, "cycle 1 (first run)")
            for t in world.tenants:
                articles = len(world.ongoing.owner(t.goods_owner_id).articles)
                orders = len(world.ongoing.owner(t.goods_owner_id).orders)
                console.print(f"  Ongoing now holds {articles} articles and {orders} orders for {t.name}")

            console.rule("changes")
            changes = _make_changes(console, world)
            second = await _cycle(console, runtime, "cycle 2 (after the changes)")
            shown = hidden = 0
            async for e in runtime.log.read(since=second.started):
                if not e.type.endswith(("requested", "succeeded", "failed", "skipped")):
                    continue
                if shown < 20:
                    console.print(f"  #{e.position} {e.tenant} {audit_.summarize(e)}", highlight=False, markup=False)
                    shown += 1
                else:
                    hidden += 1
            if hidden:
                console.print(f"  ... and {hidden} more (pipeline audit shows them all)")
            before = await runtime.log.max_position()
            third = await _cycle(console, runtime, "cycle 3 (nothing changed)")
            appended = await runtime.log.max_position() - before
            console.print(f"  cycle 3 appended {appended} events and wrote nothing to either system")

    config = folder / "pipeline.toml"
    _write(config, world.config_toml("pipeline.db"))
    elapsed = (datetime.now(UTC) - started).total_seconds()
    console.rule("what next")
    console.print(f"Done in {elapsed:.1f} s. The event log is {database}; a config for it is {config}.")
    console.print("Try (these read the log; the fake APIs are gone):")
    rel = _rel(config)
    example = changes.get("price_entity", "product:1")
    window_from = (started - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    window_to = (datetime.now(UTC) + timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for line in (
        f"pipeline --config {rel} audit stats",
        f"pipeline --config {rel} audit history {world.tenants[0].name} {example}",
        f"pipeline --config {rel} audit failures",
        f"pipeline --config {rel} replay --from {window_from} --to {window_to} --kind products --dry-run",
    ):
        console.print(f"  .venv/bin/{line}", highlight=False, markup=False)
    worst = max(first.exit_code, second.exit_code, third.exit_code)
    return 0 if worst < 2 else worst


def _make_changes(console: Console, world: Any) -> dict[str, str]:
    """A price change, an invoice paid, stock moved in the warehouse; reports what it did."""
    made: dict[str, str] = {}
    a, b, c = world.tenants[:3]
    product = next(p for p in a.company.products.values() if p.get("Code"))
    new_price = round(float(product.get("UnitPrice") or 100) + 10, 2)
    world.poweroffice.set_price(a.client_key, product["Code"], new_price)
    made["price_entity"] = f"product:{product['Id']}"
    console.print(f"  {a.name}: price of {product['Code']} set to {new_price}")
    unpaid = next(
        (
            i
            for i in b.company.invoices.values()
            if i["VoucherType"] == "OutgoingInvoice" and i.get("Balance") not in (0, 0.0) and not i.get("IsReversed")
        ),
        None,
    )
    if unpaid is not None:
        world.poweroffice.pay_invoice(b.client_key, unpaid["Id"])
        console.print(f"  {b.name}: invoice {unpaid['InvoiceNo']} paid")
    owner = world.ongoing.owner(c.goods_owner_id)
    for number in sorted(owner.articles)[:3]:
        world.ongoing.set_inventory(c.goods_owner_id, number, numberOfItems=42, sellableNumberOfItems=40)
        console.print(f"  {c.name}: warehouse stock of {number} set to 42")
    return made


def _fresh_folder(directory: str) -> Path:
    """The demo's folder, created if needed, without the database of an earlier demo."""
    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("pipeline.db*"):
        stale.unlink()
    return folder


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def _rel(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


__all__ = ["audit", "demo", "redrive", "replay", "run_forever", "serve_fakes", "sync"]
