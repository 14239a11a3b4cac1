"""Benchmark: the PowerOffice pollers against the fake, measuring request economy and the shared rate limit.

1. **Requests per paid invoice.** One company with 2,000 invoices (60% paid) is polled from scratch: every
   request the tenant makes (token, lists, batched customer and address look-ups, one lines read per paid
   invoice) divided by the number of paid invoices. Target ≤ 1.1. The rate limit is lifted for this part: it
   counts requests, not time. A second poll right after shows what the overlap re-read costs.
2. **Peak rate** and 3. **shared-key throughput.** Three tenants of different sizes poll concurrently through
   one subscription key limited to `--rps` (default 10, PowerOffice's limit), the fake enforcing the same limit
   with 429s. Peak = most requests the server saw in any one-second window (must be ≤ the limit). The bound is
   the time the limit allows for that many requests (`requests / rps`); ratio = bound / wall, target ≥ 0.9
   (slightly above 1 is possible: the first window's requests all start at once).
   Each tenant's finishing time shows the fairness: the small tenant is not held behind the big one.
4. **No avoidable 429s.** The shared-key poll runs three times: on a quiet machine, with a CPU hog beside it (one
   busy process per core, so our event loop runs late), and with 0–250 ms of random network delay in front of
   the fake (`Fault("delay")`: the server counts a request when it arrives, later than we started it).
   `throttled` = the 429s the fake answered over all three runs (target 0); `peak_rps` is the largest over the
   quiet and hog runs (the fake logs the client's send time, which the delay run moves away from the arrival),
   `shared_key_ratio` is the quiet run's.

The last line is machine-readable:

    RESULT requests_per_paid_invoice=… peak_rps=… limit_rps=… shared_key_ratio=… throttled=…

Run: .venv/bin/python benchmarks/poweroffice_poll.py [--invoices 2000] [--rps 10] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import anyio

from pipeline.clients.poweroffice import PowerOfficeClient, TenantPowerOffice
from pipeline.clients.ratelimit import RateLimiter, max_in_window
from pipeline.config import PowerOfficeSettings, Secret, TenantSettings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.fakes.faults import Fault
from pipeline.fakes.generate import generate_company
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from pipeline.pollers.poweroffice import poll_invoices, poll_products

APP = "bench-application-key"
SUB = "bench-subscription-key"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
ORDERS_SINCE = NOW - timedelta(days=365)  # before every generated invoice: all paid ones become orders
OVERLAP = timedelta(minutes=5)


@dataclass
class Run:
    fake: FakePowerOffice
    log: SqliteEventLog
    handles: dict[str, TenantPowerOffice]


def settings(origin: str, rps: float) -> PowerOfficeSettings:
    return PowerOfficeSettings(
        api_url=f"{origin}/v2",
        token_url=f"{origin}/OAuth/Token",
        application_key=Secret(APP),
        subscription_key=Secret(SUB),
        requests_per_second=rps,
    )


def tenant(name: str) -> TenantSettings:
    return TenantSettings(name=name, poweroffice_client_key=Secret(f"client-key-{name}"), ongoing_goods_owner_id=1)


async def poll_tenant(log: SqliteEventLog, handle: TenantPowerOffice) -> tuple[int, int]:
    """Products then invoices, as one cycle does. Returns (products observed, invoices observed)."""
    products = await poll_products(log, handle, handle.tenant, overlap=OVERLAP, now=NOW)
    invoices = await poll_invoices(log, handle, handle.tenant, overlap=OVERLAP, now=NOW, orders_since=ORDERS_SINCE)
    return products.observed, invoices.observed


async def requests_per_paid_invoice(invoices: int, folder: Path) -> float:
    company = generate_company(1, products=200, customers=300, invoices=invoices, paid_ratio=0.6, now=NOW)
    paid = len(company.paid_invoices())
    fake = FakePowerOffice(application_key=APP, subscription_keys=[SUB], requests_per_second=float("inf"))
    acme = tenant("acme")
    fake.add_company(acme.poweroffice_client_key.reveal(), company)
    log = await SqliteEventLog.open(folder / "economy.db")
    try:
        async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
            client = PowerOfficeClient(session, settings(origin, 10_000), RateLimiter(10_000))
            handle = client.for_tenant(acme)
            started = time.monotonic()
            result = await poll_invoices(log, handle, acme, overlap=OVERLAP, now=NOW, orders_since=ORDERS_SINCE)
            took = time.monotonic() - started
            again = await poll_invoices(log, handle, acme, overlap=OVERLAP, now=NOW, orders_since=ORDERS_SINCE)
    finally:
        await log.close()
    per_paid = result.requests / paid
    print(f"[economy] {invoices} invoices, {paid} paid (orders), {len(company.customers)} customers")
    print(
        f"[economy] first poll: {result.requests} requests ({result.pages} invoice page(s), {result.observed} "
        f"observations) in {took:.2f} s -> {per_paid:.3f} requests per paid invoice (target <= 1.1)"
    )
    print(f"[economy] poll right after: {again.requests} request(s), {again.observed} new observations")
    return per_paid


@dataclass(frozen=True)
class SharedRun:
    peak: int
    ratio: float
    throttled: int


def _spin(stop: Any) -> None:
    """Burn one core until `stop` is set."""
    while not stop.is_set():
        sum(i * i for i in range(10_000))


async def shared_key(rps: float, scale: float, folder: Path, *, condition: str = "quiet") -> SharedRun:
    """One concurrent poll of three tenants on one key. `condition`: quiet, hog (CPU hog), delay (0-250 ms)."""
    sizes: dict[str, dict[str, Any]] = {
        "big": {"products": int(3000 * scale), "customers": 80, "invoices": int(130 * scale)},
        "mid": {"products": int(800 * scale), "customers": 40, "invoices": int(60 * scale)},
        "small": {"products": 40, "customers": 5, "invoices": 5},
    }
    fake = FakePowerOffice(application_key=APP, subscription_keys=[SUB], requests_per_second=rps)
    tenants = {name: tenant(name) for name in sizes}
    for seed, (name, size) in enumerate(sizes.items(), start=10):
        fake.add_company(tenants[name].poweroffice_client_key.reveal(), generate_company(seed, now=NOW, **size))
    if condition == "delay":
        fake.faults.add(Fault("delay", seconds=0.25), times=None)
    log = await SqliteEventLog.open(folder / f"shared-{condition}.db")
    finished: dict[str, float] = {}
    stop = multiprocessing.Event()
    hogs = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    if condition == "hog":
        for hog in hogs:
            hog.start()
    try:
        async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
            client = PowerOfficeClient(session, settings(origin, rps), RateLimiter(rps))
            started = time.monotonic()

            async def one(name: str) -> None:
                await poll_tenant(log, client.for_tenant(tenants[name]))
                finished[name] = time.monotonic() - started

            async with anyio.create_task_group() as group:
                for name in sizes:
                    group.start_soon(one, name)
            wall = time.monotonic() - started
    finally:
        stop.set()
        for hog in hogs:
            if hog.is_alive():
                hog.join()
        await log.close()
    total = len(fake.requests)
    bound = total / rps
    peak = max_in_window(r.at for r in fake.requests)
    throttled = sum(1 for r in fake.requests if r.status == 429)
    ratio = bound / wall
    print(
        f"[shared:{condition}] 3 tenants on one key at {rps:g} rps: {total} requests in {wall:.2f} s "
        f"(bound {bound:.2f} s)"
    )
    for name in sizes:
        own = len(fake.requests_of(tenants[name].poweroffice_client_key.reveal()))
        print(f"[shared:{condition}]   {name:>5}: {own:4d} requests, finished after {finished[name]:6.2f} s")
    print(f"[shared:{condition}] peak {peak} requests in any 1 s window (limit {rps:g}); 429s received: {throttled}")
    print(f"[shared:{condition}] bound / wall = {ratio:.3f} (target >= 0.9)")
    return SharedRun(peak, ratio, throttled)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--invoices", type=int, default=2000, help="invoices in the request-economy company")
    parser.add_argument("--rps", type=float, default=10.0, help="the shared subscription key's limit")
    parser.add_argument("--scale", type=float, default=1.0, help="size factor for the shared-key tenants")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        per_paid = await requests_per_paid_invoice(args.invoices, folder)
        runs = {c: await shared_key(args.rps, args.scale, folder, condition=c) for c in ("quiet", "hog", "delay")}
    peak = max(runs["quiet"].peak, runs["hog"].peak)
    throttled = sum(r.throttled for r in runs.values())
    print(
        f"RESULT requests_per_paid_invoice={per_paid:.3f} peak_rps={peak} limit_rps={args.rps:g} "
        f"shared_key_ratio={runs['quiet'].ratio:.3f} throttled={throttled}"
    )


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
