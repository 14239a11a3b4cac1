"""Both fake APIs running together with generated goods owners: for the demo, `pipeline fakes`, end-to-end tests
and benchmarks.

    async with fake_world(tenants=3) as world:
        settings = world.settings(tmp_path / "pipeline.db")
        ...  # run the real pipeline against world.poweroffice / world.ongoing

Each tenant is one PowerOffice company (its own client key, generated data) and one Ongoing goods owner.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.config import (
    OngoingSettings,
    PowerOfficeSettings,
    Secret,
    Settings,
    TenantSettings,
)
from pipeline.fakes.generate import Company, generate_company
from pipeline.fakes.ongoing import FakeOngoing, serve_ongoing
from pipeline.fakes.poweroffice import FakePowerOffice, serve_poweroffice

APPLICATION_KEY = "demo-application-key"
SUBSCRIPTION_KEY = "demo-subscription-key"
ONGOING_USER = "demo-user"
ONGOING_PASSWORD = "demo-password"
NAMES = ("nordlys", "fjellgear", "havbris", "skogstua", "vinterlys", "bryggeriet", "sjokolade", "tinde")


@dataclass(frozen=True)
class FakeTenant:
    name: str
    client_key: str
    goods_owner_id: int
    company: Company


def fake_settings(
    database: str | Path,
    poweroffice_origin: str,
    ongoing_url: str,
    tenants: Iterable[tuple[str, str, int]],
    *,
    orders_since: datetime | None,
    requests_per_second: float = 10.0,
    timeout_seconds: float = 10.0,
    tenant_overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Settings pointing the real pipeline at fakes served at these addresses, for `tenants` given as (name, client
    key, goods owner id): for a `World` here, or for fakes served by another process (the benchmarks)."""
    return Settings(
        database=database,
        poweroffice=PowerOfficeSettings(
            api_url=f"{poweroffice_origin}/v2",
            token_url=f"{poweroffice_origin}/OAuth/Token",
            application_key=Secret(APPLICATION_KEY),
            subscription_key=Secret(SUBSCRIPTION_KEY),
            requests_per_second=requests_per_second,
            timeout_seconds=timeout_seconds,
        ),
        ongoing=OngoingSettings(
            api_url=ongoing_url,
            username=ONGOING_USER,
            password=Secret(ONGOING_PASSWORD),
            timeout_seconds=timeout_seconds,
        ),
        tenants=tuple(
            TenantSettings(
                name=name,
                poweroffice_client_key=Secret(key),
                ongoing_goods_owner_id=owner,
                orders_since=orders_since,
                **(tenant_overrides or {}),  # type: ignore[arg-type]
            )
            for name, key, owner in tenants
        ),
    )


@dataclass
class World:
    poweroffice: FakePowerOffice
    ongoing: FakeOngoing
    poweroffice_origin: str
    ongoing_url: str
    tenants: list[FakeTenant] = field(default_factory=list)
    orders_since: datetime | None = None

    def tenant(self, name: str) -> FakeTenant:
        return next(t for t in self.tenants if t.name == name)

    def settings(self, database: Path, *, requests_per_second: float = 10.0, **tenant_overrides: object) -> Settings:
        """Settings pointing the real pipeline at these fakes."""
        return fake_settings(
            database,
            self.poweroffice_origin,
            self.ongoing_url,
            [(t.name, t.client_key, t.goods_owner_id) for t in self.tenants],
            orders_since=self.orders_since,
            requests_per_second=requests_per_second,
            tenant_overrides=tenant_overrides,
        )

    def config_toml(
        self, database: str, *, requests_per_second: float = 10.0, interval_seconds: float | None = None
    ) -> str:
        """The same settings as a config file (secrets inline: these are the fakes' own demo keys)."""
        lines = [f'database = "{database}"']
        if interval_seconds is not None:
            lines.append(f"interval_seconds = {interval_seconds:g}")
        lines += [
            "",
            "[poweroffice]",
            f'api_url = "{self.poweroffice_origin}/v2"',
            f'token_url = "{self.poweroffice_origin}/OAuth/Token"',
            f'application_key = "{APPLICATION_KEY}"',
            f'subscription_key = "{SUBSCRIPTION_KEY}"',
            f"requests_per_second = {requests_per_second}",
            "",
            "[ongoing]",
            f'api_url = "{self.ongoing_url}"',
            f'username = "{ONGOING_USER}"',
            f'password = "{ONGOING_PASSWORD}"',
        ]
        for t in self.tenants:
            lines += [
                "",
                "[[tenants]]",
                f'name = "{t.name}"',
                f'poweroffice_client_key = "{t.client_key}"',
                f"ongoing_goods_owner_id = {t.goods_owner_id}",
            ]
            if self.orders_since:
                lines.append(f"orders_since = {self.orders_since.strftime('%Y-%m-%dT%H:%M:%SZ')}")
        return "\n".join(lines) + "\n"


@asynccontextmanager
async def fake_world(
    tenants: int = 3,
    *,
    products: int = 60,
    customers: int = 20,
    invoices: int = 60,
    paid_ratio: float = 0.6,
    seed: int = 7,
    now: datetime | None = None,
    orders_within: timedelta | None = timedelta(days=30),
    host: str = "127.0.0.1",
    poweroffice_port: int = 0,
    ongoing_port: int = 0,
    requests_per_second: float = 10.0,
    write_latency: float = 0.0,
) -> AsyncIterator[World]:
    """Start both fakes with `tenants` generated goods owners; stop them on exit.

    `orders_within`: the tenants' `orders_since` is that long before `now`, so recently paid invoices become
    orders on the first cycle (None leaves it unset: the first cycle's start).
    """
    now = now or datetime.now(UTC)
    po = FakePowerOffice(
        application_key=APPLICATION_KEY,
        subscription_keys=[SUBSCRIPTION_KEY],
        requests_per_second=requests_per_second,
    )
    wms = FakeOngoing(username=ONGOING_USER, password=ONGOING_PASSWORD, write_latency=write_latency)
    made: list[FakeTenant] = []
    for i in range(tenants):
        name = NAMES[i] if i < len(NAMES) else f"tenant{i + 1}"
        company = generate_company(
            seed + i,
            products=products,
            customers=customers,
            invoices=invoices,
            paid_ratio=paid_ratio,
            now=now,
            name=f"{name.capitalize()} AS",
        )
        key = f"client-key-{name}"
        po.add_company(key, company)
        made.append(FakeTenant(name, key, 100 + i, company))
    async with (
        serve_poweroffice(po, host, poweroffice_port) as po_origin,
        serve_ongoing(wms, host, ongoing_port) as wms_url,
    ):
        yield World(po, wms, po_origin, wms_url, made, now - orders_within if orders_within else None)
