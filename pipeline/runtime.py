"""The composition root: opens the log, the HTTP session and the clients once, and runs sync cycles.

A cycle, for every tenant at once (PowerOffice calls share one fair limiter per subscription key):

1. poll PowerOffice (products, then invoices) and Ongoing's stock;
2. project the new observations into commands;
3. send the commands (articles, then the orders that wait for them, and the stock write-back).

A tenant whose polling fails is reported and skipped for the rest of the cycle; the others go on. Nothing here
holds state between cycles except the log: cursors, checkpoints and outcomes all live there.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING

import aiohttp
import anyio

from pipeline.clients.http import RetryPolicy
from pipeline.clients.ongoing import OngoingClient
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import LimiterRegistry
from pipeline.config import Settings, TenantSettings
from pipeline.errors import ApiError, AuthError, StoreError
from pipeline.eventlog import open_log
from pipeline.pollers.ongoing_stock import poll_stock
from pipeline.pollers.poweroffice import poll_invoices, poll_products
from pipeline.projectors.commands import project
from pipeline.senders import Sender, SendSummary

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TenantReport:
    name: str
    observed: int = 0
    commands: int = 0
    delivered: int = 0
    skipped: int = 0
    failed: int = 0
    waiting: int = 0
    errors: list[str] = field(default_factory=list)
    setup_error: bool = False


@dataclass
class CycleReport:
    started: datetime
    tenants: dict[str, TenantReport]

    @property
    def exit_code(self) -> int:
        """0 all delivered · 1 some entity failed · 2 a tenant could not be reached or authenticated."""
        if any(t.setup_error for t in self.tenants.values()):
            return 2
        if any(t.failed or t.errors for t in self.tenants.values()):
            return 1
        return 0


class Runtime:
    """Owns the log, the session and the clients for the life of the process. Use `async with`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self._stack = AsyncExitStack()
        self.log: AnyLog
        self.session: aiohttp.ClientSession
        self.poweroffice: PowerOfficeClient
        self.ongoing: OngoingClient
        self.limiters = LimiterRegistry(settings.poweroffice.requests_per_second)

    async def __aenter__(self) -> Runtime:
        try:
            self.log = await open_log(self.settings.database, clock=self.clock)
            self._stack.push_async_callback(self.log.close)
            self.session = await self._stack.enter_async_context(aiohttp.ClientSession())
            po = self.settings.poweroffice
            self.poweroffice = PowerOfficeClient(
                self.session, po, self.limiters.for_key(po.subscription_key.reveal()), policy=self.policy
            )
            self.ongoing = OngoingClient(self.session, self.settings.ongoing, policy=self.policy, clock=self.clock)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def cycle(self, progress: Callable[[str], None] | None = None) -> CycleReport:
        """One full cycle for every tenant. Raises StoreError only if the log itself fails.

        Two phases: PowerOffice → Ongoing (poll, project, send articles and orders), then Ongoing's stock →
        PowerOffice (poll, project, send). Stock is read after the articles are written, so a new article's stock
        goes back in the same cycle and a second cycle over unchanged data has nothing to do.
        `progress` is told each step as it starts.
        """
        say = progress or (lambda _step: None)
        started = self.clock()
        reports = {t.name: TenantReport(t.name) for t in self.settings.tenants}
        phases = (
            ("PowerOffice", "products and invoices → Ongoing", self._poll_poweroffice),
            ("Ongoing stock", "stock → PowerOffice", self._poll_stock),
        )
        for phase, label, poll in phases:
            say(f"{label}: polling {phase}")
            async with anyio.create_task_group() as tg:
                for tenant in self.settings.tenants:
                    tg.start_soon(self._guarded, phase, poll, tenant, started, reports[tenant.name])
            say(f"{label}: projecting")
            for tenant in self.settings.tenants:
                result = await project(self.log, tenant)
                reports[tenant.name].commands += result.commands
                reports[tenant.name].failed += result.failed
            say(f"{label}: sending")
            summary = await self.send()
            for name, counts in summary.tenants.items():
                r = reports[name]
                r.delivered += counts.delivered
                r.skipped += counts.skipped
                r.failed += counts.failed
                r.waiting = counts.waiting
        return CycleReport(started, reports)

    async def send(self) -> SendSummary:
        sender = Sender(
            self.log,
            self.settings.tenants,
            ongoing=self.ongoing,
            poweroffice=self.poweroffice,
            parallel=self.settings.ongoing.parallel_goods_owners,
        )
        return await sender.run_once()

    async def _guarded(
        self,
        phase: str,
        poll: Callable[[TenantSettings, datetime, TenantReport], Awaitable[None]],
        tenant: TenantSettings,
        now: datetime,
        report: TenantReport,
    ) -> None:
        """Run one tenant's polls; a failure is reported for that tenant and the others go on."""
        if report.setup_error:
            return
        try:
            await poll(tenant, now, report)
        except AuthError as exc:
            report.errors.append(f"{phase}: {exc}")
            report.setup_error = True
            log.error("%s: %s refused the credentials: %s", tenant.name, phase, exc)
        except ApiError as exc:
            report.errors.append(f"{phase}: {exc}")
            report.setup_error = report.setup_error or exc.status is None
            log.error("%s: polling %s failed: %s", tenant.name, phase, exc)
        except StoreError:
            raise  # the log itself failed: no tenant can go on
        except Exception as exc:  # a bulkhead: one tenant's surprise must not stop the others' cycle
            report.errors.append(f"{phase}: unexpected {type(exc).__name__}: {exc}")
            log.exception("%s: polling %s failed unexpectedly", tenant.name, phase)

    async def _poll_poweroffice(self, tenant: TenantSettings, now: datetime, report: TenantReport) -> None:
        po = self.poweroffice.for_tenant(tenant)
        overlap = timedelta(seconds=self.settings.poweroffice.overlap_seconds)
        orders_since = tenant.orders_since or await self._first_cycle_start(tenant, now)
        products = await poll_products(self.log, po, tenant, overlap=overlap, now=now)
        report.observed += products.observed
        invoices = await poll_invoices(self.log, po, tenant, overlap=overlap, now=now, orders_since=orders_since)
        report.observed += invoices.observed

    async def _poll_stock(self, tenant: TenantSettings, now: datetime, report: TenantReport) -> None:
        result = await poll_stock(
            self.log,
            self.ongoing.for_tenant(tenant),
            tenant,
            now=now,
            full_sweep_every=timedelta(hours=self.settings.ongoing.full_stock_sweep_hours),
            page_size=self.settings.ongoing.page_size,
        )
        report.observed += result.observed

    async def _first_cycle_start(self, tenant: TenantSettings, now: datetime) -> datetime:
        """`orders_since` defaults to the start of the tenant's first cycle: remembered in the log's cursors."""
        key = "tenant.first_cycle"
        seen = await self.log.cursor(key, tenant.name)
        if seen is not None:
            return datetime.fromisoformat(seen)
        await self.log.append([], cursors={(key, tenant.name): now.isoformat()})
        return now
