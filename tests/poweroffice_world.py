"""A PowerOffice world for poller tests: the fake server with one generated company, the real client and a real
SQLite event log, on an injected wall clock (the fake's timestamps and `Date` header follow it)."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.clients.http import RetryPolicy
from pipeline.clients.poweroffice import PowerOfficeClient, TenantPowerOffice, parse_timestamp
from pipeline.clients.ratelimit import RateLimiter
from pipeline.config import PowerOfficeSettings, Secret, TenantSettings
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.fakes.generate import generate_company
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice
from pipeline.pollers.poweroffice import PollResult, poll_invoices, poll_products

APP = "application-key-1"
SUB = "subscription-key-1"
ACME = "client-key-acme-0001"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
OVERLAP = timedelta(minutes=5)


class WallClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class World:
    fake: FakePowerOffice
    clock: WallClock
    log: SqliteEventLog
    client: TenantPowerOffice
    tenant: TenantSettings

    async def products(self) -> PollResult:
        return await poll_products(self.log, self.client, self.tenant, overlap=OVERLAP, now=self.clock.now)

    async def invoices(self, *, orders_since: datetime = NOW, overlap: timedelta = OVERLAP) -> PollResult:
        return await poll_invoices(
            self.log, self.client, self.tenant, overlap=overlap, now=self.clock.now, orders_since=orders_since
        )

    async def events(self, type_name: str) -> list[Any]:
        return [e async for e in self.log.read(tenant=self.tenant.name, types=[type_name])]

    async def per_entity(self, type_name: str) -> Counter[str]:
        return Counter(e.entity for e in await self.events(type_name))

    def requests_since(self, mark: int) -> list[str]:
        return [r.path.lower() for r in self.fake.requests[mark:]]


@asynccontextmanager
async def world(
    tmp_path: Path,
    *,
    page_size: int = 5000,
    policy: RetryPolicy | None = None,
    order_trigger: str = "paid",
    orders_since: datetime | None = None,
    **company: Any,
) -> AsyncIterator[World]:
    clock = WallClock()
    # Tokens outlive the hours these tests jump the clock by; expiry has its own tests in test_poweroffice_client.
    fake = FakePowerOffice(
        application_key=APP, subscription_keys=[SUB], requests_per_second=1000, clock=clock, token_ttl=30 * 86400
    )
    sizes: dict[str, Any] = {"products": 25, "customers": 15, "invoices": 40}
    sizes.update(company)
    fake.add_company(ACME, generate_company(21, now=NOW, **sizes))
    log = await SqliteEventLog.open(tmp_path / "events.db", clock=clock)
    try:
        async with serve_poweroffice(fake) as origin, aiohttp.ClientSession() as session:
            settings = PowerOfficeSettings(
                api_url=f"{origin}/v2",
                token_url=f"{origin}/OAuth/Token",
                application_key=Secret(APP),
                subscription_key=Secret(SUB),
                page_size=page_size,
            )
            client = PowerOfficeClient(
                session, settings, RateLimiter(1000, window_margin=0), policy=policy or RetryPolicy()
            )
            tenant = TenantSettings(
                name="acme",
                poweroffice_client_key=Secret(ACME),
                ongoing_goods_owner_id=1,
                order_trigger=order_trigger,  # type: ignore[arg-type]
                orders_since=orders_since,
            )
            yield World(fake, clock, log, client.for_tenant(tenant), tenant)
    finally:
        await log.close()


def goods(w: World) -> list[str]:
    """Codes of the company's stock products, oldest change first."""
    products = [p for p in w.fake.company(ACME).products.values() if p["IsStockItem"]]
    products.sort(key=lambda p: parse_timestamp(p["LastChangedDateTimeOffset"]))
    return [p["Code"] for p in products]


def latest_stamp(records: list[dict[str, Any]], field: str) -> str:
    return max(parse_timestamp(r[field]) for r in records).isoformat()
