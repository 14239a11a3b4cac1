"""What each CLI command does, given parsed arguments and settings. Returns the process exit code."""

from __future__ import annotations

import argparse
import logging
import signal
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
from rich.console import Console

from pipeline import audit as audit_
from pipeline import console as out
from pipeline.config import Settings
from pipeline.errors import ConfigError, PipelineError
from pipeline.eventlog import open_log
from pipeline.eventlog.base import NewEvent
from pipeline.events import EntityRedriven
from pipeline.replay import Kind
from pipeline.replay import replay as replay_
from pipeline.runtime import CycleReport, Runtime

log = logging.getLogger(__name__)


async def _cycle(console: Console, runtime: Runtime, title: str) -> CycleReport:
    if console.is_terminal:
        with console.status(f"{title}: starting") as status:
            report = await runtime.cycle(lambda stage: status.update(f"{title}: {stage}"))
    else:
        report = await runtime.cycle(lambda stage: console.print(f"{title}: {stage}"))
    out.print_cycle(console, report, title)
    return report


async def sync(console: Console, settings: Settings) -> int:
    async with Runtime(settings) as runtime:
        report = await _cycle(console, runtime, "sync")
    return report.exit_code


async def run_forever(
    console: Console,
    settings: Settings,
    signals: Sequence[signal.Signals] = (),
    *,
    stop: anyio.Event | None = None,
    started: Callable[[str], None] | None = None,
    cycled: Callable[[CycleReport], None] | None = None,
) -> int:
    """A cycle every `interval_seconds` until one of `signals` arrives (or `stop` is set); the running cycle
    finishes first. Serves /healthz, /metrics and a status page at `status_host:status_port` meanwhile."""
    from pipeline.web import Status, serve

    stop = stop or anyio.Event()
    status = Status(settings.interval_seconds, lambda: datetime.now(UTC))

    async def watch() -> None:
        with anyio.open_signal_receiver(*signals) as received:
            async for signum in received:
                console.print(f"{signal.Signals(signum).name}: finishing the current cycle, then stopping")
                stop.set()
                return

    async with (
        Runtime(settings) as runtime,
        serve(status, settings.status_host, settings.status_port) as url,
        anyio.create_task_group() as tg,
    ):
        console.print(f"status: {url}/  health: {url}/healthz  metrics: {url}/metrics")
        if started:
            started(url)
        if signals:
            tg.start_soon(watch)
        while not stop.is_set():
            try:
                report = await _cycle(console, runtime, f"cycle {datetime.now(UTC):%H:%M:%S}")
            except PipelineError as exc:  # e.g. the disk is full: say so, stay up, try again next interval
                console.print(f"cycle failed: {exc}", markup=False, highlight=False)
                log.error("cycle failed: %s", exc)
            else:
                status.record(report, datetime.now(UTC))
                if cycled:
                    cycled(report)
            with anyio.move_on_after(settings.interval_seconds):
                await stop.wait()
        tg.cancel_scope.cancel()
    return 0


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
    async with await open_log(settings.database) as log_:
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
    if report.appended:
        console.print(f"{report.appended} command(s) appended: the next `pipeline sync` (or `run` cycle) sends them")
    return 0


async def audit(console: Console, settings: Settings, args: argparse.Namespace) -> int:
    async with await open_log(settings.database) as log_:
        if args.audit == "history":
            out.print_rows(console, await audit_.history(log_, args.tenant, args.entity), as_json=args.json)
        elif args.audit == "lineage":
            out.print_rows(console, await audit_.lineage(log_, args.position), as_json=args.json)
        elif args.audit == "failures":
            rows = await audit_.failures(log_, args.tenant)
            out.print_rows(console, rows, as_json=args.json)
            return 1 if rows else 0
        elif args.audit == "stats":
            out.print_table(console, ("tenant", "type", "events"), await audit_.stats(log_), as_json=args.json)
        elif args.audit == "sql":
            result = await audit_.sql(log_, args.query)
            width = len(result[0]) if result else 0
            out.print_table(console, [f"c{i}" for i in range(width)], result, as_json=args.json)
    return 0


async def redrive(console: Console, settings: Settings, tenant: str, entity: str, reason: str) -> int:
    if tenant not in {t.name for t in settings.tenants}:
        raise ConfigError([f"no tenant named {tenant!r}"], "command line")
    async with await open_log(settings.database) as log_:
        stamp = await log_.max_position()
        event = EntityRedriven(reason=reason, by="operator")
        await log_.append([NewEvent(tenant, entity, event, f"{tenant}/{entity}/redrive/{stamp}")])
    console.print(f"{tenant} {entity}: released; the next sync sends its latest command")
    return 0


async def serve_fakes(
    console: Console, host: str, po_port: int, wms_port: int, tenants: int, write_config: str | None
) -> int:
    from pipeline.fakes.world import fake_world

    async with fake_world(tenants, host=host, poweroffice_port=po_port, ongoing_port=wms_port) as world:
        console.print(
            f"PowerOffice Go (fake): {world.poweroffice_origin}/v2  token: {world.poweroffice_origin}/OAuth/Token"
        )
        console.print(f"Ongoing WMS (fake):    {world.ongoing_url}")
        for t in world.tenants:
            console.print(f"  tenant {t.name}: client key {t.client_key}, goods owner {t.goods_owner_id}")
        if write_config:
            _write(Path(write_config), world.config_toml("pipeline.db"))
            console.print(f"config written to {write_config}: pipeline --config {write_config} sync")
        console.print("serving until Ctrl-C")
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for _ in received:
                break
    return 0


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
        async with Runtime(settings) as runtime:
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
