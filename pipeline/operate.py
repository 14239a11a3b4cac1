"""Operator commands around the service: `check` (credentials, read-only), `backup` and `migrate` of the log."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
from rich.console import Console
from rich.table import Table

from pipeline.clients.http import RetryPolicy
from pipeline.clients.ongoing import OngoingClient
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import LimiterRegistry
from pipeline.config import Settings, TenantSettings
from pipeline.errors import ApiError, ConfigError, StoreError
from pipeline.eventlog.sqlite import SCHEMA_VERSION, SqliteEventLog, backup_file, backup_path, schema_version

# `check` is interactive: a dead host should fail in seconds, not after the service's two minutes of retries.
CHECK_POLICY = RetryPolicy(attempts=2, timeout=20.0, wait_initial=0.5, wait_max=2.0)


@dataclass
class Verdict:
    ok: bool
    detail: str


async def migrate(console: Console, settings: Settings) -> int:
    """Upgrade an existing log to this release's schema, copying it to `<db>.v<N>.bak` first. (A PostgreSQL log
    upgrades itself when `sync` or `run` opens it; back it up with PostgreSQL's own tools.)"""
    if isinstance(settings.database, str):
        raise ConfigError(["database: migrate works on a SQLite file; a PostgreSQL log upgrades when opened"])
    before = schema_version(settings.database)
    if before == SCHEMA_VERSION:
        console.print(f"{settings.database}: schema v{before} is current; nothing to do", highlight=False)
        return 0
    async with await SqliteEventLog.open(settings.database, mode="migrate"):
        pass
    console.print(
        f"{settings.database}: upgraded from schema v{before} to v{SCHEMA_VERSION};"
        f" the v{before} file is kept as {backup_path(settings.database, before)}",
        highlight=False,
    )
    return 0


async def backup(console: Console, settings: Settings, target: str) -> int:
    """A consistent copy of the log (safe while `run` appends to it)."""
    await anyio.to_thread.run_sync(backup_file, settings.database, target)
    console.print(f"{settings.database} copied to {target}", highlight=False)
    return 0


async def check(console: Console, settings: Settings, *, policy: RetryPolicy = CHECK_POLICY) -> int:
    """For every tenant: a PowerOffice token and one page of products, and Ongoing's articles for its goods
    owner with its user. Reads only; writes nothing to either system or to the log. Exit 0 all OK, 1 otherwise."""
    results: dict[str, tuple[Verdict, Verdict]] = {}
    async with aiohttp.ClientSession() as session:
        po_settings = settings.poweroffice
        limiters = LimiterRegistry(po_settings.requests_per_second)
        poweroffice = PowerOfficeClient(
            session, po_settings, limiters.for_key(po_settings.subscription_key.reveal()), policy=policy
        )
        ongoing = OngoingClient(session, settings.ongoing, policy=policy)

        async def one(tenant: TenantSettings) -> None:
            po = await _verdict(_poweroffice(poweroffice, tenant))
            wms = await _verdict(_ongoing(ongoing, tenant))
            results[tenant.name] = (po, wms)

        async with anyio.create_task_group() as tg:
            for tenant in settings.tenants:
                tg.start_soon(one, tenant)

    table = Table(title=f"pipeline check ({settings.source or 'config'})")
    for column in ("tenant", "PowerOffice Go", "Ongoing WMS"):
        table.add_column(column)
    for tenant in settings.tenants:
        po, wms = results[tenant.name]
        table.add_row(tenant.name, _cell(po), _cell(wms))
    console.print(table)
    console.print(f"event log: {_log_state(settings)}", highlight=False, markup=False)
    return 0 if all(po.ok and wms.ok for po, wms in results.values()) else 1


async def _first(pages: AsyncIterator[list[dict[str, Any]]]) -> list[dict[str, Any]] | None:
    """The first page of a paged read, then the reader is closed (no more requests)."""
    try:
        return await anext(pages, None)
    finally:
        close = getattr(pages, "aclose", None)
        if close is not None:
            await close()


async def _poweroffice(client: PowerOfficeClient, tenant: TenantSettings) -> str:
    first = await _first(client.for_tenant(tenant).products(page_size=1))
    return "token and products readable" + ("" if first else " (no products yet)")


async def _ongoing(client: OngoingClient, tenant: TenantSettings) -> str:
    first = await _first(client.for_tenant(tenant).articles(page_size=1))
    who = tenant.ongoing_username or client.settings.username
    return f"goods owner {tenant.ongoing_goods_owner_id} readable as {who}" + ("" if first else " (no articles yet)")


async def _verdict(call: Awaitable[str]) -> Verdict:
    try:
        detail = await call
    except ApiError as exc:
        where = f"{exc.method} {exc.path}"
        status = f"HTTP {exc.status}" if exc.status is not None else "no answer"
        return Verdict(False, f"{status} on {where}" + (f": {exc.detail}" if exc.detail else ""))
    return Verdict(True, str(detail))


def _cell(v: Verdict) -> str:
    return f"[green]OK[/green] {v.detail}" if v.ok else f"[red]FAIL[/red] {v.detail}"


def _log_state(settings: Settings) -> str:
    if isinstance(settings.database, str):
        return "a PostgreSQL log (not inspected here)"
    if not settings.database.exists():
        return f"{settings.database} does not exist yet; the first sync creates it"
    try:
        version = schema_version(settings.database)
    except StoreError as exc:
        return str(exc)
    if version < SCHEMA_VERSION:
        return f"{settings.database} has schema v{version}; the next sync upgrades it to v{SCHEMA_VERSION}"
    if version > SCHEMA_VERSION:
        return f"{settings.database} has schema v{version}, newer than this release (v{SCHEMA_VERSION})"
    return f"{settings.database} (schema v{version})"
