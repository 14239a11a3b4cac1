"""Benchmark: an unchanged cycle costs the same on a year of history as on a day of it; memory stays flat.

    .venv/bin/python benchmarks/cycle_growth.py [--tenants 20] [--small 10000] [--big 1000000] [--rounds 5]
                                               [--soak-cycles 200] [--soak-products 2000]

Growth. For each size (`--small`, `--big` events) a fresh log is filled with realistic history for every tenant,
appended through the log's own `append` in big batches: product changes (observation, article command, success),
stock changes (observation, stock write-back, success) and orders (the unpaid and then the paid invoice
observation, the order command, its success; now and then a transient failure first), about one third each by
episode, over the same products the fakes hold, with the stage checkpoints at the end of that history. Then the
real `Runtime` runs against both fakes (in a child process per size, as the real APIs are elsewhere; the fakes on
the last core and the pipeline on the others when there are two or more): cycles until
one appends nothing, then `--rounds` unchanged cycles of each size in turns (small, big, big, small, …: the machine
is shared, and turns give both the same share of whatever else runs), best kept. `cycle_ratio` = big ÷ small
(target ≤ 1.2).

Soak. `--soak-cycles` unchanged cycles back to back against fakes with `--tenants` × `--soak-products` products;
`rss_growth` = this process's RSS after the last cycle ÷ after cycle 10 (target ≤ 1.1).

`db_bytes_per_event` is the big log's file size (after a WAL checkpoint) per event. The machine is shared: figures
move by tens of percent from run to run; compare the two sizes of one run. Last line:
`RESULT cycle_ms_small=… cycle_ms_big=… cycle_ratio=… db_bytes_per_event=… rss_growth=…`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio

from pipeline.config import Settings
from pipeline.eventlog.base import NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import (
    ArticleUpsertRequested,
    CommandFailed,
    CommandSucceeded,
    Event,
    InvoiceObserved,
    OrderUpsertRequested,
    ProductObserved,
    StockObserved,
    StockPatchRequested,
)
from pipeline.fakes.world import fake_settings, fake_world
from pipeline.runtime import Runtime

RATE = 100_000.0  # requests per second at the fake and the limiter: the benchmark measures the pipeline, not pacing
BATCH = 20_000  # events per append while filling


# ---------------------------------------------------------------------------------------------- the fakes


def _serve(conn: Connection, tenants: int, products: int, invoices: int, now: datetime, cores: list[int]) -> None:
    """Child process: serve both fakes, send what the parent needs to know, stop on "stop"."""
    _own_core(fakes=True, cores=cores)

    async def serve() -> None:
        async with fake_world(
            tenants, products=products, customers=max(5, products // 10), invoices=invoices, now=now,
            requests_per_second=RATE,
        ) as world:  # fmt: skip
            world.poweroffice.requests_kept = 1000
            conn.send(
                {
                    "poweroffice": world.poweroffice_origin,
                    "ongoing": world.ongoing_url,
                    "orders_since": world.orders_since,
                    "tenants": [
                        (t.name, t.client_key, t.goods_owner_id, list(t.company.products.values()))
                        for t in world.tenants
                    ],
                }
            )
            await anyio.to_thread.run_sync(conn.recv)

    anyio.run(serve)


CORES = sorted(os.sched_getaffinity(0))  # before this process narrows its own (see `_own_core`)


def _own_core(*, fakes: bool, cores: list[int] = CORES) -> None:
    """The fakes stand in for servers elsewhere: on a machine of two cores or more they get the last core and the
    pipeline the others, so that neither waits for the scheduler to move it off the other's core. (Left to the
    scheduler, a run's cycles drift by tens of percent for seconds at a time on a 2-core machine.)"""
    if len(cores) >= 2:
        os.sched_setaffinity(0, {cores[-1]} if fakes else set(cores[:-1]))


@contextlib.contextmanager
def fakes(tenants: int, products: int, invoices: int, now: datetime) -> Iterator[dict[str, Any]]:
    ours, theirs = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(theirs, tenants, products, invoices, now, CORES), daemon=True
    )
    process.start()
    try:
        yield ours.recv()
        ours.send("stop")
        process.join(timeout=10)
    finally:
        if process.is_alive():
            process.kill()
            process.join()


def settings_for(world: dict[str, Any], database: Path) -> Settings:
    tenants = [(name, key, owner) for name, key, owner, _ in world["tenants"]]
    return fake_settings(
        database,
        world["poweroffice"],
        world["ongoing"],
        tenants,
        orders_since=world["orders_since"],
        requests_per_second=RATE,
        timeout_seconds=30.0,
    )


# ---------------------------------------------------------------------------------------------- history


class History:
    """Past episodes of one tenant, as a sync records them, with true positions for causation."""

    def __init__(self, tenant: str, owner: int, products: list[dict[str, Any]], rng: random.Random) -> None:
        self.tenant = tenant
        self.owner = owner
        self.products = [p for p in products if p.get("Code")]
        self.rng = rng
        self.orders = 0

    def episode(self, next_position: int) -> list[NewEvent]:
        kind = self.rng.random()
        product = self.rng.choice(self.products)
        if kind < 0.34:
            return self._product(product, next_position)
        if kind < 0.67:
            return self._stock(product, next_position)
        return self._order(next_position)

    def _new(self, entity: str, event: Event, position: int, causation: int | None = None) -> NewEvent:
        return NewEvent(self.tenant, entity, event, f"history/{self.tenant}/{position}", causation=causation)

    def _done(self, entity: str, command: int, position: int) -> list[NewEvent]:
        out = []
        if self.rng.random() < 0.005:  # a transient failure that a later run got through
            failed = CommandFailed(command, 503, "Service Unavailable", 6, False)
            out.append(self._new(entity, failed, position, command))
            position += 1
        ids = {"articleSystemId": self.rng.randrange(10**6)}
        return [*out, self._new(entity, CommandSucceeded(command, ids, 1), position, command)]

    def _product(self, product: dict[str, Any], at: int) -> list[NewEvent]:
        changed = dict(product, UnitPrice=round(self.rng.uniform(10, 900), 2))
        code = product["Code"]
        body = {
            "goodsOwnerId": self.owner,
            "articleNumber": code,
            "articleName": product.get("Name"),
            "customerPrice": changed["UnitPrice"],
            "unitCode": product.get("UnitOfMeasureCode"),
            "barCode": product.get("Gtin"),
            "purchasePrice": product.get("UnitCost"),
        }
        return [
            self._new(f"product:{product['Id']}", ProductObserved(changed, None), at),
            self._new(f"article:{code}", ArticleUpsertRequested(body, product["Id"], []), at + 1, at),
            *self._done(f"article:{code}", at + 1, at + 2),
        ]

    def _stock(self, product: dict[str, Any], at: int) -> list[NewEvent]:
        code = product["Code"]
        n = float(self.rng.randrange(500))
        figures = {
            "numberOfItems": n,
            "sellableNumberOfItems": n,
            "numberOfBookedItems": 0.0,
            "numberOfLockedItems": 0.0,
            "allocatedNumberOfItems": 0.0,
        }
        return [
            self._new(f"stock:{code}", StockObserved(code, product["Id"], figures), at),
            self._new(f"stockback:{product['Id']}", StockPatchRequested(product["Id"], code, n), at + 1, at),
            *self._done(f"stockback:{product['Id']}", at + 1, at + 2),
        ]

    def _order(self, at: int) -> list[NewEvent]:
        self.orders += 1
        invoice_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        number = f"H{self.owner}-{self.orders}"
        lines = [
            {
                "ProductCode": p["Code"],
                "Description": p.get("Name"),
                "Quantity": float(self.rng.randrange(1, 5)),
                "UnitPrice": p.get("UnitPrice"),
                "LineNo": i + 1,
            }
            for i, p in enumerate(self.rng.sample(self.products, min(3, len(self.products))))
        ]
        invoice = {
            "Id": invoice_id,
            "InvoiceNo": self.orders,
            "OrderNo": number,
            "CustomerNo": 10000 + self.orders % 50,
            "Balance": 1250.0,
            "TotalAmount": 1250.0,
            "CurrencyCode": "NOK",
            "InvoiceDate": "2026-01-15",
            "BalanceLastChangedDateTimeOffset": "2026-01-15T10:00:00.0000000Z",
        }
        customer = {"Id": 5, "Number": invoice["CustomerNo"], "Name": "Kunde AS", "MailAddress": {"City": "Bergen"}}
        paid = dict(invoice, Balance=0.0)
        body = {
            "goodsOwnerId": self.owner,
            "orderNumber": number,
            "customer": {"customerNumber": str(invoice["CustomerNo"]), "name": "Kunde AS"},
            "orderLines": [
                {"rowNumber": str(x["LineNo"]), "articleNumber": x["ProductCode"], "numberOfItems": x["Quantity"]}
                for x in lines
            ],
        }
        articles = [x["ProductCode"] for x in lines]
        return [
            self._new(f"invoice:{invoice_id}", InvoiceObserved(invoice, []), at),
            self._new(f"invoice:{invoice_id}", InvoiceObserved(paid, lines, customer, []), at + 1),
            self._new(f"order:{invoice_id}", OrderUpsertRequested(body, invoice_id, articles), at + 2, at + 1),
            *self._done(f"order:{invoice_id}", at + 2, at + 3),
        ]


async def fill(path: Path, world: dict[str, Any], events: int, seed: int = 11) -> int:
    """Append about `events` events of history over the world's tenants, interleaved; checkpoints at the end."""
    rng = random.Random(seed)
    histories = [History(name, owner, products, rng) for name, _, owner, products in world["tenants"]]
    async with await SqliteEventLog.open(path) as log:
        position = await log.max_position() + 1
        written = 0
        batch: list[NewEvent] = []
        while written < events:
            for h in histories:
                got = h.episode(position)
                batch.extend(got)
                position += len(got)
                written += len(got)
            if len(batch) >= BATCH or written >= events:
                result = await log.append(batch)
                assert result.skipped == 0
                batch = []
        head = await log.max_position()
        stages = ("projector", "sender.ongoing", "sender.poweroffice")
        await log.append([], checkpoints={(stage, h.tenant): head for h in histories for stage in stages})
        return head


# ---------------------------------------------------------------------------------------------- measuring


def file_bytes(db: Path) -> int:
    """The database and its -wal / -shm files."""
    return sum(p.stat().st_size for p in db.parent.glob(f"{db.name}*"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def settle(runtime: Runtime, most: int = 6) -> int:
    """Cycles until one appends nothing; returns how many it took."""
    for n in range(1, most + 1):
        before = await runtime.log.max_position()
        await runtime.cycle()
        if await runtime.log.max_position() == before:
            return n
    raise SystemExit(f"the log still grows after {most} cycles: not an unchanged cycle")


async def settled(settings: Settings, stack: contextlib.AsyncExitStack) -> Runtime:
    runtime = await stack.enter_async_context(Runtime(settings))
    await settle(runtime)
    return runtime


async def unchanged_cycle(runtime: Runtime) -> float:
    before = await runtime.log.max_position()
    t0 = time.perf_counter()
    report = await runtime.cycle()
    elapsed = time.perf_counter() - t0
    assert report.exit_code == 0, report
    assert await runtime.log.max_position() == before, "an unchanged cycle appended events"
    return elapsed


async def growth(args: argparse.Namespace, now: datetime, tmp: Path) -> tuple[float, float, int, int]:
    """Fill both logs, settle a runtime on each, then time their unchanged cycles in turns (small, big, big, small,
    …): the machine is shared, and turns give both sizes the same share of whatever else runs meanwhile."""
    sizes = (args.small, args.big)
    with contextlib.ExitStack() as worlds:
        fakes_of = [worlds.enter_context(fakes(args.tenants, args.products, args.invoices, now)) for _ in sizes]
        dbs = [tmp / f"growth{size}.db" for size in sizes]
        for size, world, db in zip(sizes, fakes_of, dbs, strict=True):
            # The first real cycles add about `--expected-real` events on top of the history.
            t0 = time.perf_counter()
            head = await fill(db, world, max(0, size - args.expected_real))
            print(f"  {size:,} events: history of {head:,} filled in {time.perf_counter() - t0:.1f}s")
        async with contextlib.AsyncExitStack() as stack:
            runtimes = [await settled(settings_for(world, db), stack) for world, db in zip(fakes_of, dbs, strict=True)]
            times: list[list[float]] = [[], []]
            for round_ in range(args.rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)
                for i in order:
                    times[i].append(await unchanged_cycle(runtimes[i]))
            events = [await r.log.max_position() for r in runtimes]
            for r in runtimes:
                await r.log.checkpoint_wal()
    for size, got, n, db in zip(sizes, times, events, dbs, strict=True):
        shown = ", ".join(f"{t * 1000:.0f}" for t in got)
        print(f"  {size:,}: {n:,} events in the log, {file_bytes(db) / 1e6:.1f} MB; unchanged cycles: {shown} ms")
    # The same unchanged cycle, five times in a row: a wide spread says the machine changed pace during the run,
    # and a best of five may then have caught one size in a fast moment only. Say so rather than hide it.
    spread = max(max(got) / min(got) for got in times)
    if spread > 1.3:
        print(f"  note: the machine was unsteady (one size's cycles spread by {spread:.2f}×): rerun to compare")
    return min(times[0]), min(times[1]), events[1], file_bytes(dbs[1])


async def soak(args: argparse.Namespace, now: datetime, tmp: Path) -> float:
    with fakes(args.tenants, args.soak_products, args.invoices, now) as world:
        settings = settings_for(world, tmp / "soak.db")
        async with Runtime(settings) as runtime:
            t0 = time.perf_counter()
            first = await settle(runtime, most=8)
            print(
                f"  soak: {args.tenants} tenants × {args.soak_products} products settled in {first} cycles,"
                f" {time.perf_counter() - t0:.0f}s, {await runtime.log.max_position():,} events"
            )
            at10 = 0
            t0 = time.perf_counter()
            for n in range(1, args.soak_cycles + 1):
                await runtime.cycle()
                if n == min(10, args.soak_cycles):
                    at10 = rss_bytes()
                if n % 50 == 0:
                    print(f"    cycle {n}: RSS {rss_bytes() / 1e6:.1f} MB")
            last = rss_bytes()
            wall = time.perf_counter() - t0
    print(
        f"  soak: {args.soak_cycles} unchanged cycles in {wall:.0f}s; RSS after cycle 10 {at10 / 1e6:.1f} MB,"
        f" after cycle {args.soak_cycles} {last / 1e6:.1f} MB"
    )
    return last / at10


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--products", type=int, default=40, help="products per tenant in the growth runs")
    parser.add_argument("--invoices", type=int, default=10, help="invoices per tenant at the fakes")
    parser.add_argument("--expected-real", type=int, default=5_000, help="events the first real cycles add")
    parser.add_argument("--soak-cycles", type=int, default=200)
    parser.add_argument("--soak-products", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the generated data's mapping warnings are not the point here
    now = datetime.now(UTC) - timedelta(minutes=1)
    _own_core(fakes=False)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        print(
            f"growth: {args.tenants} tenants × {args.products} products; unchanged cycle, best of {args.rounds},"
            " the two sizes in turns"
        )
        small, big, big_events, big_bytes = await growth(args, now, tmp)
        (tmp / f"growth{args.big}.db").unlink()
        ratio = big / small
        per_event = big_bytes / big_events
        print(f"  cycle ratio {ratio:.3f} (target ≤ 1.2); {per_event:.0f} bytes per event")
        growth_rss = await soak(args, now, tmp) if args.soak_cycles >= 10 else float("nan")
        print(f"  RSS growth {growth_rss:.3f} (target ≤ 1.1)")
    print(
        f"RESULT cycle_ms_small={small * 1000:.1f} cycle_ms_big={big * 1000:.1f} cycle_ratio={ratio:.3f}"
        f" db_bytes_per_event={per_event:.0f} rss_growth={growth_rss:.3f}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
