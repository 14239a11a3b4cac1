"""The composition root and the process model: opens the log, the HTTP session and the clients once, and runs
every tenant's own loop of cycles.

**Process model.** One process per event log sends (`Runtime` takes the log's lease, `pipeline.lease`, before it
opens the log). Inside it, each tenant runs its **own loop**; the loops share only the process (log, HTTP session,
clients) and the PowerOffice limiter of their subscription key. One tenant's cycle is:

1. poll PowerOffice (products, then invoices);
2. project the new observations into commands, and send them (articles, orders, stock left over);
3. poll Ongoing's stock (after the articles are written, so a new article's stock goes back in the same cycle);
4. project, and send the stock write-back.

**Scheduling.** A tenant's cycles start every `interval_seconds` (its own, else the global one), counted from the
start of the previous cycle; a cycle that overruns is followed at once by the next. A slow goods owner delays only
its own loop.

**Deadline.** A cycle's deadline is its tenant's interval. Past it, each send lane starts no delivery but its
first (so a cycle always makes progress, even when its polls outlast the deadline); writes in flight finish and are
recorded. What is left has no outcome and the sender's checkpoint stays below it, so the next cycle picks it up
from the log: nothing is lost. Polls and projections are never cut short: a poll would start again from its cursor,
and a backfill longer than the deadline would never finish. Once the service is stopping, no new step starts
either.

**Staying up.** A cycle that raises (the log failed: disk full, locked, read-only; a bug; an `ExceptionGroup` out of
a task group) is logged with its cause, recorded in the tenant's `TenantState` (`last_error`, `failed_cycles`) and
the report's `cycle_error`, and the loop goes on at its next time. Only configuration and schema errors
(`ConfigError`, `SchemaVersionError`) end `run`. A tenant whose polling fails is reported; the others go on.
Nothing here holds state between cycles except the log: cursors, checkpoints and outcomes all live there.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import aiohttp
import anyio

from pipeline import freshness
from pipeline.clients.http import RetryPolicy
from pipeline.clients.ongoing import OngoingClient
from pipeline.clients.poweroffice import PowerOfficeClient
from pipeline.clients.ratelimit import LimiterRegistry
from pipeline.config import Settings, TenantSettings
from pipeline.errors import ApiError, AuthError, ConfigError, SchemaVersionError, StoreError, trim
from pipeline.eventlog import is_postgres, open_log
from pipeline.eventlog.base import EventLog
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.lease import Lease
from pipeline.pollers.ongoing_stock import poll_stock
from pipeline.pollers.poweroffice import poll_invoices, poll_products
from pipeline.problems import standing_problems
from pipeline.projectors.commands import project
from pipeline.senders import Breakers, Sender, SendSummary

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog
    from pipeline.workers import Workers

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Progress = Callable[[str], None]
Expired = Callable[[], bool]

# Exit codes of a cycle (`sync`): see CycleReport.exit_code.
EXIT_OK, EXIT_FAILED, EXIT_SETUP, EXIT_CYCLE_FAILED = 0, 1, 2, 3

# The only errors that end `run`: they stay wrong until an operator acts.
FATAL_ERRORS: tuple[type[Exception], ...] = (ConfigError, SchemaVersionError)


def utc_now() -> datetime:
    return datetime.now(UTC)


Result = Literal["starting", "ok", "failures", "setup", "failed"]


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
    # Why the cycle ended early with an exception (the log failed, a bug), as one line; None when it did not.
    cycle_error: str | None = None
    # The deadline (or a stop) came before the cycle's work was done; the rest continues next cycle.
    deadline_reached: bool = False
    # Standing at the end of the cycle, whenever they began (`pipeline.problems`): entities held by a permanent
    # failure, and entities whose latest observation cannot be mapped.
    quarantined: int = 0
    unmapped: int = 0
    # A stage's circuit breaker is open: its system looks down for this tenant; its commands wait (no outcome).
    degraded: str | None = None
    # What each waiting entity waits for (an order: its articles, named), from the senders.
    waits: dict[str, str] = field(default_factory=dict)
    refused: bool = False  # the setup error was refused credentials (401/403), not an unreachable system
    # (kind, seconds) per delivery of the cycle: answer time − the source's change time (`pipeline.freshness`).
    freshness: list[tuple[str, float]] = field(default_factory=list)
    # PostgreSQL: another worker held the tenant, so this process ran no cycle for it (`pipeline.workers`).
    held_by: str | None = None

    @property
    def result(self) -> Result:
        """failed: the cycle raised · setup: unreachable or refused · failures: an entity or a poll failed · ok."""
        if self.cycle_error is not None:
            return "failed"
        if self.setup_error:
            return "setup"
        if self.failed or self.errors or self.quarantined or self.unmapped:
            return "failures"
        return "ok"

    @property
    def cycle_failed(self) -> bool:
        """The cycle could not do its job: it raised, or a poll failed. (A failed entity is not a failed cycle.)"""
        return self.cycle_error is not None or bool(self.errors)


@dataclass
class CycleReport:
    started: datetime
    tenants: dict[str, TenantReport]

    @property
    def exit_code(self) -> int:
        """0 all delivered · 1 some entity (or poll) failed · 2 a tenant could not be reached or authenticated ·
        3 a tenant's cycle failed (the log could not be written or read, or a bug)."""
        if any(t.cycle_error is not None for t in self.tenants.values()):
            return EXIT_CYCLE_FAILED
        if any(t.setup_error for t in self.tenants.values()):
            return EXIT_SETUP
        if any(t.failed or t.errors or t.quarantined or t.unmapped for t in self.tenants.values()):
            return EXIT_FAILED
        return EXIT_OK


@dataclass(frozen=True, slots=True)
class TenantState:
    """What one tenant's loop last did, for the status page, `/readyz` and `/metrics`.

    `Runtime.states[name]` is replaced (never changed in place) after each of the tenant's cycles, so a reader
    always sees one consistent value. Times are from the runtime's clock (UTC).

    - `result`: the last cycle's `TenantReport.result` ("starting" before the first one ends);
    - `report`: the last cycle's counts (None before the first);
    - `last_error`: why the last cycle failed (its exception, or its polls' errors), None if it did not;
    - `last_success`: when the last cycle that did not fail ended;
    - `next_cycle`: when the next cycle is due (None when no further cycle is planned, as in `sync`);
    - `cycles`, `failed_cycles`: cycles ended, and how many of them failed (`TenantReport.cycle_failed`).
    """

    name: str
    interval_seconds: float
    result: Result = "starting"
    report: TenantReport | None = None
    last_error: str | None = None
    last_started: datetime | None = None
    last_ended: datetime | None = None
    last_success: datetime | None = None
    next_cycle: datetime | None = None
    cycles: int = 0
    failed_cycles: int = 0
    # The last scheduled reconcile (`run` only): differences per kind, and when.
    reconcile_differences: dict[str, int] | None = None
    last_reconciled: datetime | None = None

    @property
    def failing(self) -> bool:
        """The last cycle failed (see `TenantReport.cycle_failed`) or could not reach the tenant."""
        return self.report is not None and (self.report.cycle_failed or self.report.setup_error)


def fatal_error(exc: BaseException) -> Exception | None:
    """The configuration or schema error in `exc` (looking inside exception groups), if any."""
    for leaf in _leaves(exc):
        if isinstance(leaf, FATAL_ERRORS):
            return leaf
    return None


def describe_failure(exc: BaseException) -> str:
    """One line naming every distinct failure in `exc` (an exception group is flattened): `Type: message; …`."""
    parts: list[str] = []
    for leaf in _leaves(exc):
        text = trim(f"{type(leaf).__name__}: {leaf}" if str(leaf) else type(leaf).__name__)
        if text not in parts:
            parts.append(text)
    return trim("; ".join(parts), 600)


async def _first_of(*events: anyio.Event) -> None:
    """Return once any of `events` is set."""
    async with anyio.create_task_group() as tg:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            tg.cancel_scope.cancel()

        for event in events:
            tg.start_soon(wait, event)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


class Runtime:
    """Owns the lease, the log, the session and the clients for the life of the process. Use `async with`.

    Entering raises `LeaseHeldError` when another process sends from the same log, StoreError when the log
    cannot be opened and SchemaVersionError when a newer program wrote it. `command` names the holder in the
    lease (`sync`, `run`, ...). `wrap_log` may wrap the opened log (tests inject faults with it).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock = utc_now,
        policy: RetryPolicy | None = None,
        command: str = "",
        wrap_log: Callable[[SqliteEventLog], EventLog] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.policy = policy or RetryPolicy()
        self.command = command
        self._wrap_log = wrap_log
        self._stack = AsyncExitStack()
        self.log: EventLog
        self.store: AnyLog
        self.session: aiohttp.ClientSession
        self.poweroffice: PowerOfficeClient
        self.ongoing: OngoingClient
        self.limiters = LimiterRegistry(settings.poweroffice.requests_per_second)
        self.states: dict[str, TenantState] = {
            t.name: TenantState(t.name, self.interval_of(t)) for t in settings.tenants
        }
        self.breakers = Breakers()  # the senders' circuit breakers: a cool-down spans cycles
        # Each tenant's first cycle start (`freshness.FIRST_CYCLE`), once read or written: it never changes.
        self._first_cycles: dict[str, datetime] = {}
        # On PostgreSQL: this process's worker registration and tenant leases (`pipeline.workers`); None on SQLite.
        self.workers: Workers | None = None

    def apply_settings(self, settings: Settings) -> None:
        """Use `settings` (a reload) from the next `run`/`cycle` on: its tenants and interval. Only between runs."""
        self.settings = settings
        self.states = {
            t.name: dataclasses.replace(self.states[t.name], interval_seconds=self.interval_of(t))
            if t.name in self.states
            else TenantState(t.name, self.interval_of(t))
            for t in settings.tenants
        }

    async def __aenter__(self) -> Runtime:
        try:
            opened: AnyLog
            if is_postgres(self.settings.database):
                # The database coordinates its own writers; a lock file beside it has no place to live.
                opened = await open_log(self.settings.database, clock=self.clock)
            else:
                self._stack.enter_context(Lease(Path(self.settings.database), self.command))
                opened = await SqliteEventLog.open(self.settings.database, clock=self.clock)
            self._stack.push_async_callback(opened.close)
            self.store = opened  # the log itself, for the read-only views (status page, audit queries)
            self.log = self._wrap_log(opened) if self._wrap_log and isinstance(opened, SqliteEventLog) else opened
            self.session = await self._stack.enter_async_context(aiohttp.ClientSession())
            po = self.settings.poweroffice
            self.poweroffice = PowerOfficeClient(
                self.session, po, self.limiters.for_key(po.subscription_key.reveal()), policy=self.policy
            )
            self.ongoing = OngoingClient(self.session, self.settings.ongoing, policy=self.policy, clock=self.clock)
            if is_postgres(self.settings.database):
                # Several processes may send from this log: each holds only the tenants it leases.
                from pipeline.workers import Workers

                self.workers = await Workers.open(
                    self, str(self.settings.database), self.poweroffice.limiter, self.command
                )
                self._stack.push_async_callback(self.workers.close)
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    def interval_of(self, tenant: TenantSettings) -> float:
        """Seconds between the tenant's cycles, which is also its cycle's deadline."""
        return tenant.interval_seconds if tenant.interval_seconds is not None else self.settings.interval_seconds

    # -- the loops ---------------------------------------------------------------------------------------------

    async def cycle(self, progress: Progress | None = None) -> CycleReport:
        """One cycle for every tenant at once (each with its own deadline), then return: what `sync` does.

        A tenant's failed cycle is in its report (`cycle_error`), never raised; only a configuration or schema
        error is raised. `progress` is told each step as it starts, prefixed with the tenant's name.
        """
        started = self.clock()
        ended: dict[str, TenantReport] = {}

        def collect(state: TenantState) -> None:
            assert state.report is not None
            ended[state.name] = state.report

        await self.run(anyio.Event(), cycles=1, on_cycle=collect, progress=progress)
        if self.workers is not None:  # PostgreSQL: the tenants another worker held ran no cycle here
            board = self.workers.board
            for t in self.settings.tenants:
                if t.name not in ended:
                    ended[t.name] = TenantReport(t.name, held_by=board.held_elsewhere(t.name) or "another worker")
        return CycleReport(started, {t.name: ended[t.name] for t in self.settings.tenants})

    async def run(
        self,
        stop: anyio.Event,
        *,
        cycles: int | None = None,
        interval: float | None = None,
        deadline: float | None = None,
        on_cycle: Callable[[TenantState], None] | None = None,
        progress: Progress | None = None,
        on_start: Callable[[str], None] | None = None,
    ) -> None:
        """Every tenant's loop, until `stop` is set (each finishes its cycle in progress) or each has run `cycles`.

        `interval` / `deadline` (seconds) replace every tenant's own interval / deadline (tests, benchmarks).
        `on_start` is called with the tenant's name as each cycle starts, `on_cycle` with its new state after it.
        Raises only ConfigError or SchemaVersionError (then every loop is cancelled). On PostgreSQL only the
        tenants whose lease this process holds run here (`pipeline.workers`).
        """
        if self.workers is not None:
            await self.workers.run(
                stop,
                cycles=cycles,
                interval=interval,
                deadline=deadline,
                on_cycle=on_cycle,
                progress=progress,
                on_start=on_start,
            )
            return
        fatal: list[Exception] = []
        async with anyio.create_task_group() as tg:
            for tenant in self.settings.tenants:
                tg.start_soon(
                    self._loop,
                    tenant,
                    stop,
                    cycles,
                    interval,
                    deadline,
                    on_cycle,
                    progress,
                    fatal,
                    tg.cancel_scope,
                    on_start,
                )
        if fatal:
            raise fatal[0]

    async def _loop(
        self,
        tenant: TenantSettings,
        stop: anyio.Event,
        cycles: int | None,
        interval: float | None,
        deadline: float | None,
        on_cycle: Callable[[TenantState], None] | None,
        progress: Progress | None,
        fatal: list[Exception],
        scope: anyio.CancelScope,
        on_start: Callable[[str], None] | None = None,
        until: anyio.Event | None = None,
    ) -> None:
        """`until` (a worker handing the tenant over) ends the loop before its next cycle, never inside one."""
        period = self.interval_of(tenant) if interval is None else interval
        budget = self.interval_of(tenant) if deadline is None else deadline
        done = 0
        while not stop.is_set() and not (until is not None and until.is_set()):
            begun = anyio.current_time()
            last = cycles is not None and done + 1 >= cycles
            if on_start is not None:
                on_start(tenant.name)
            try:
                state = await self._tenant_cycle(
                    tenant, begun + budget, None if last else begun + period, stop, progress
                )
            except FATAL_ERRORS as exc:
                fatal.append(exc)
                scope.cancel()
                return
            done += 1
            if on_cycle is not None:
                try:
                    on_cycle(state)
                except Exception:  # whoever listens must not stop the loop
                    log.exception("%s: recording the cycle failed", tenant.name)
            if last:
                return
            with anyio.move_on_after(max(0.0, begun + period - anyio.current_time())):
                await (stop.wait() if until is None else _first_of(stop, until))

    async def _tenant_cycle(
        self,
        tenant: TenantSettings,
        deadline_at: float,
        next_at: float | None,
        stop: anyio.Event,
        progress: Progress | None,
    ) -> TenantState:
        """Run one cycle of `tenant`, catching every failure but a fatal one; record and return its new state."""
        name = tenant.name
        started = self.clock()
        report = TenantReport(name)

        def expired() -> bool:
            return stop.is_set() or anyio.current_time() >= deadline_at

        reconciled: dict[str, int] | None = None
        try:
            head = await self.log.max_position()
            await self.tenant_cycle(tenant, report, expired=expired, stopping=stop.is_set, progress=progress)
            watched = self._first_cycles.get(name)
            samples = await freshness.after(self.log, name, head, watched=watched)
            report.freshness = [(s.kind, s.seconds) for s in samples]
            # A cycle cut by its deadline left deliveries on their way: comparing the sides now would report them.
            if self.command == "run" and not stop.is_set() and not report.deadline_reached:
                reconciled = await self.reconcile_if_due(tenant)
        except Exception as exc:
            fatal = fatal_error(exc)
            if fatal is not None:
                raise fatal from None
            report.cycle_error = describe_failure(exc)
            log.error("%s: cycle failed: %s", name, report.cycle_error, exc_info=exc)
        if report.deadline_reached and not stop.is_set():
            log.warning("%s: the cycle reached its deadline; the rest continues next cycle", name)
        ended = self.clock()
        before = self.states[name]
        failed = report.cycle_failed
        last_error = report.cycle_error or ("; ".join(report.errors) if report.errors else None)
        next_cycle = None
        if next_at is not None:
            next_cycle = ended + timedelta(seconds=max(0.0, next_at - anyio.current_time()))
        state = dataclasses.replace(
            before,
            result=report.result,
            report=report,
            last_error=last_error,
            last_started=started,
            last_ended=ended,
            last_success=before.last_success if failed else ended,
            next_cycle=next_cycle,
            cycles=before.cycles + 1,
            failed_cycles=before.failed_cycles + failed,
        )
        if reconciled is not None:
            state = dataclasses.replace(state, reconcile_differences=reconciled, last_reconciled=ended)
        self.states[name] = state
        return state

    async def reconcile_if_due(self, tenant: TenantSettings) -> dict[str, int] | None:
        """Reconcile `tenant` (`pipeline.reconcile`) when its last `reconcile.recorded` is older than
        `reconcile_every_hours` (0: never) or could not read a side; repairs only with `reconcile_repair`. Returns
        the differences per kind, or None when none was due."""
        from pipeline.events import ReconcileRecorded
        from pipeline.reconcile import Sides, reconcile

        every = self.settings.reconcile_every_hours
        if every <= 0:
            return None
        found = await self.log.latest([ReconcileRecorded.TYPE], tenant=tenant.name, entity="reconcile")
        last = found.get((tenant.name, "reconcile"))
        failed = last is not None and isinstance(last.event, ReconcileRecorded) and last.event.error is not None
        if last is not None and not failed and self.clock() - last.recorded_at < timedelta(hours=every):
            return None  # (one that could not read a side is tried again next cycle)
        sides = Sides(self.poweroffice.for_tenant, self.ongoing.for_tenant)
        repair = self.settings.reconcile_repair
        report = await reconcile(
            self.log, self.settings, sides, tenant=tenant.name, repair=repair, by=f"pipeline {self.command}"
        )
        result = report.tenants[tenant.name]
        counts = {kind: len(r.differences) for kind, r in result.kinds.items()}
        if result.error:
            log.warning("%s: reconcile could not read a side: %s", tenant.name, result.error)
        elif not result.agreed:
            shown = ", ".join(f"{kind} {n}" for kind, n in counts.items() if n)
            log.warning(
                "%s: reconcile found differences: %s (repairs appended: %d)", tenant.name, shown, result.appended
            )
        return counts

    # -- one tenant's cycle ------------------------------------------------------------------------------------

    async def tenant_cycle(
        self,
        tenant: TenantSettings,
        report: TenantReport,
        *,
        expired: Expired = lambda: False,
        stopping: Expired = lambda: False,
        progress: Progress | None = None,
    ) -> None:
        """Poll, project and send for `tenant`, filling `report`. Raises StoreError when the log fails, and
        whatever a bug raises: the caller decides what a failed cycle means.

        Once `expired()` is true (the deadline), each send lane starts no delivery but its first, so even a
        cycle whose polls outlast the deadline makes progress; the steps themselves all run. Once `stopping()` is
        true, no new step starts either. Either sets `report.deadline_reached`."""

        def say(step: str) -> None:
            if progress is not None:
                progress(f"{tenant.name}: {step}")

        now = self.clock()
        await self._first_cycle_start(tenant, now)  # recorded by the first cycle, whatever `orders_since` says
        phases = (
            ("PowerOffice", "products and invoices → Ongoing", self._poll_poweroffice),
            ("Ongoing stock", "stock → PowerOffice", self._poll_stock),
        )
        for phase, label, poll in phases:
            if stopping():
                report.deadline_reached = True
                break
            if not report.setup_error:
                say(f"{label}: polling {phase}")
                await self._guarded(phase, poll, tenant, now, report)
            say(f"{label}: projecting")  # local work, a checkpoint per batch: never cut
            result = await project(self.log, tenant)
            report.commands += result.commands
            report.failed += result.failed
            if stopping():
                report.deadline_reached = True
                break
            say(f"{label}: sending")
            counts = (await self.send([tenant], expired=expired)).tenant(tenant.name)
            report.delivered += counts.delivered
            report.skipped += counts.skipped
            report.failed += counts.failed
            report.waiting = counts.waiting
            report.waits = dict(counts.waits)
            report.degraded = counts.degraded
            if expired():
                report.deadline_reached = True
            if counts.refused:  # credentials refused on a write: a tenant problem (exit 2), nothing quarantined
                report.errors.append(counts.refused)
                report.setup_error = report.refused = True
        # Standing problems, whenever they began (a quarantine from last week still fails `sync`).
        standing = await standing_problems(self.log, tenant.name)
        report.quarantined = len(standing.quarantined)
        report.unmapped = standing.unmapped

    async def send(
        self, tenants: Sequence[TenantSettings] | None = None, *, expired: Expired | None = None
    ) -> SendSummary:
        """Send what is pending for `tenants` (default: all); see `StageRunner.run_once` for `expired`."""
        sender = Sender(
            self.log,
            self.settings.tenants if tenants is None else tenants,
            ongoing=self.ongoing,
            poweroffice=self.poweroffice,
            parallel=self.settings.ongoing.parallel_goods_owners,
            breakers=self.breakers,
        )
        return await sender.run_once(expired=expired)

    async def _guarded(
        self,
        phase: str,
        poll: Callable[[TenantSettings, datetime, TenantReport], Awaitable[None]],
        tenant: TenantSettings,
        now: datetime,
        report: TenantReport,
    ) -> None:
        """Run one of a tenant's polls; an API failure or a surprise is reported, and the cycle goes on."""
        try:
            await poll(tenant, now, report)
        except AuthError as exc:
            report.errors.append(f"{phase}: {exc}")
            report.setup_error = report.refused = True
            log.error("%s: %s refused the credentials: %s", tenant.name, phase, exc)
        except ApiError as exc:
            report.errors.append(f"{phase}: {exc}")
            report.setup_error = report.setup_error or exc.status is None
            log.error("%s: polling %s failed: %s", tenant.name, phase, exc)
        except (StoreError, ConfigError):
            raise  # the log itself failed (or cannot be used): the cycle cannot go on
        except Exception as exc:  # a bug polling one source: reported, and the rest of the cycle still runs
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
        """The start of the tenant's first cycle, remembered in the log's cursors (written by that cycle): the
        default `orders_since`, and where freshness begins (`freshness.FIRST_CYCLE`)."""
        known = self._first_cycles.get(tenant.name)
        if known is not None:
            return known
        key = freshness.FIRST_CYCLE
        seen = await self.log.cursor(key, tenant.name)
        if seen is None:
            await self.log.append([], cursors={(key, tenant.name): now.isoformat()})
        first = self._first_cycles[tenant.name] = datetime.fromisoformat(seen) if seen is not None else now
        return first
