"""The service's HTTP face while `pipeline run` is up.

- `/livez`: 200 while the loop is alive. 503, naming the tenant, when its running cycle (the first one included)
  has shown no progress (no HTTP answer for it) for `stall_seconds`, or its next cycle is that long overdue.
- `/readyz`: 200 with one line per tenant and its state; 503 naming the tenants whose credentials are refused or
  whose systems are unreachable. A tenant whose first cycle has not ended is `starting`, which is ready.
- `/healthz`: the same as `/readyz` (kept for existing probes).
- `/metrics`: Prometheus text (`pipeline.metrics`).
- `/`: the status page (`pipeline.statuspage`), refreshing itself; `/entity/<tenant>/<entity>`: one entity's
  history from the log, as a page.

`Status` is what the service knows about itself. The runtime's reports come in through its adapter methods
(`attach`, `cycle_started`, `record_tenant` — each tenant's loop reports its own cycles — or `record`,
`cycle_failed`, `next_cycle`) and nowhere else.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import anyio
from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from pipeline import audit, statuspage
from pipeline.metrics import LimiterView, Metrics
from pipeline.runtime import CycleReport, TenantReport, TenantState
from pipeline.serving import serve_app

if TYPE_CHECKING:
    from pipeline.eventlog import AnyLog
    from pipeline.workers import Board

# How long the log-derived part (quarantined, pending, head) is reused before it is read again: for the page, and
# for /metrics (scraped every 15-60 s; the quarantine gauges may lag by that much, and the log is spared the reads).
LOG_VIEW_TTL = timedelta(seconds=5)
METRICS_LOG_VIEW_TTL = timedelta(seconds=60)


@dataclass
class TenantStatus:
    """A tenant as the last cycles left it."""

    name: str
    last: TenantReport | None = None
    last_at: datetime | None = None  # end of the last cycle that reported this tenant
    last_ok: datetime | None = None  # end of the last cycle in which it polled without an error
    last_error: str | None = None
    last_error_at: datetime | None = None

    @property
    def state(self) -> str:
        """starting · failed · refused · unreachable · ok (the page refines ok into waiting / quarantined from the
        log). `failed`: the cycle itself raised (the log could not be written, a bug)."""
        r = self.last
        if r is None:
            return "starting"
        if r.cycle_error is not None:
            return "failed"
        if r.refused:
            return "refused"
        if r.degraded:
            return "degraded"
        if r.setup_error or r.errors:
            return "unreachable"
        return "ok"


# Tenant states that make `/readyz` answer 503.
NOT_READY = ("failed", "refused", "unreachable", "degraded")


@dataclass(frozen=True, slots=True)
class CyclePoint:
    """One cycle, for the chart: events appended to the log and deliveries made."""

    ended: datetime
    events: int
    delivered: int
    failed: bool = False


@dataclass
class Totals:
    cycles: int = 0
    cycles_failed: int = 0
    observed: int = 0
    commands: int = 0
    delivered: int = 0
    skipped: int = 0
    failed: int = 0


@dataclass
class Status:
    interval_seconds: float
    clock: Callable[[], datetime]
    tenants: Sequence[str] = ()
    stall_seconds: float = 600.0
    requests_per_second: float = 10.0
    metrics: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        self.interval = timedelta(seconds=self.interval_seconds)
        self.stall = timedelta(seconds=self.stall_seconds)
        self.started = self.clock()
        self.tenant_status: dict[str, TenantStatus] = {n: TenantStatus(n) for n in self.tenants}
        self.totals = Totals()
        self.history: deque[CyclePoint] = deque()
        self.running: dict[str, datetime] = {}  # tenant → start of its running cycle
        self.progress: dict[str, datetime] = {}  # tenant → its last sign of progress (an HTTP answer)
        self.last_end: datetime | None = None
        self.next_at: datetime | None = None
        self.next_by_tenant: dict[str, datetime] = {}
        self.last_cycle_error: str | None = None
        self.states: dict[str, TenantState] = {}  # each tenant's loop state, as it last reported it
        # The latest deliveries' freshness per tenant (seconds), for the p95 on the page.
        self.recent_freshness: dict[str, deque[float]] = {}
        self.log: AnyLog | None = None
        self.limiter: LimiterView | None = None
        self._head: int | None = None
        self._poweroffice_starts: deque[datetime] = deque()
        self._poweroffice_429s = 0
        self._log_view: statuspage.LogView | None = None
        self._log_view_at: datetime | None = None
        self._board: Callable[[], Board] | None = None  # PostgreSQL workers: who holds which tenant
        self.metrics.listeners.append(self._heard)

    # -------------------------------------------------------------------------------- adapter: the loop tells

    async def attach(self, log: AnyLog, limiter: LimiterView | None = None) -> None:
        """The log (for the page's queries and the head) and the PowerOffice key's limiter."""
        self.log = log
        self.limiter = limiter
        self.metrics.limiter.limiter = limiter
        self._set_head(await log.max_position())

    def attach_workers(self, board: Callable[[], Board]) -> None:
        """PostgreSQL: `board()` says which worker holds which tenant (`pipeline.workers`). Only the tenants held
        here count for `/livez` and `/readyz`; the others are named with their holder."""
        self._board = board

    @property
    def board(self) -> Board | None:
        return self._board() if self._board is not None else None

    def _mine(self, name: str, board: Board | None) -> bool:
        """Whether this process answers for `name`'s health: always on SQLite; on PostgreSQL while it holds it."""
        return board is None or board.held_here(name)

    def detach(self) -> None:
        """The log is closing: from now on the page and /metrics show what the loops reported, without it."""
        self.log = None

    def cycle_started(self, at: datetime, tenants: Sequence[str] | None = None) -> None:
        """A cycle started for `tenants` (all of them when None: today's loop cycles every tenant at once)."""
        for name in self.tenant_status if tenants is None else tenants:
            self.running[name] = self.progress[name] = at

    @property
    def running_since(self) -> datetime | None:
        return min(self.running.values(), default=None)

    def record(self, report: CycleReport, ended: datetime, head: int | None = None) -> None:
        """A cycle ended with `report` (every tenant in it); `head` is the log's newest position after it."""
        m = self.metrics
        for r in report.tenants.values():
            m.cycles.labels(r.result).inc()
        m.cycle_seconds.observe(max(0.0, (ended - report.started).total_seconds()))
        m.last_cycle.set(ended.timestamp())
        delivered = 0
        t = self.totals
        t.cycles += 1
        for r in report.tenants.values():
            m.observed.labels(r.name).inc(r.observed)
            m.commands.labels(r.name).inc(r.commands)
            m.delivered.labels(r.name).inc(r.delivered)
            m.skipped.labels(r.name).inc(r.skipped)
            m.failed.labels(r.name).inc(r.failed)
            m.waiting.labels(r.name).set(r.waiting)
            m.unmapped.labels(r.name).set(r.unmapped)
            m.degraded.labels(r.name).set(1 if r.degraded else 0)
            if r.cycle_failed:
                m.cycles_failed.labels(r.name).inc()
                t.cycles_failed += 1
            t.observed += r.observed
            t.commands += r.commands
            t.delivered += r.delivered
            t.skipped += r.skipped
            t.failed += r.failed
            delivered += r.delivered
            self.running.pop(r.name, None)
            ts = self.tenant_status.setdefault(r.name, TenantStatus(r.name))
            ts.last, ts.last_at = r, ended
            if r.cycle_error is not None or r.errors or r.setup_error or r.degraded:
                error = r.cycle_error or (r.errors[-1] if r.errors else r.degraded or "setup failed")
                ts.last_error, ts.last_error_at = error, ended
            else:
                ts.last_ok = ended
                m.last_success.labels(r.name).set(ended.timestamp())
        if head is not None:
            events = head - (self._head or 0)
            self._set_head(head)
        else:  # what the cycle appended, from its counts
            events = sum(r.observed + r.commands + r.delivered + r.skipped + r.failed for r in report.tenants.values())
        self._point(CyclePoint(ended, max(0, events), delivered))
        self.last_end, self.last_cycle_error = ended, None

    def set_tenants(self, names: Sequence[str]) -> None:
        """The tenants after a reload: new ones start as `starting`, removed ones leave the page."""
        self.tenant_status = {n: self.tenant_status.get(n) or TenantStatus(n) for n in names}
        self.states = {n: s for n, s in self.states.items() if n in self.tenant_status}
        for name in list(self.running):
            if name not in self.tenant_status:
                del self.running[name]

    def record_tenant(self, state: TenantState) -> None:
        """One tenant's loop ended a cycle (`pipeline.runtime.TenantState`): record it, and when its next is due."""
        self.states[state.name] = state
        ended = state.last_ended or self.clock()
        if state.report is not None:
            self.record(CycleReport(state.last_started or ended, {state.name: state.report}), ended)
        if state.next_cycle is not None:
            self.next_cycle(state.next_cycle, [state.name])
        m = self.metrics
        for kind, n in (state.reconcile_differences or {}).items():
            m.reconcile_differences.labels(state.name, kind).set(n)
        if state.report is not None:
            recent = self.recent_freshness.setdefault(state.name, deque(maxlen=1000))
            for kind, seconds in state.report.freshness:
                m.freshness.labels(state.name, kind).observe(seconds)
                recent.append(seconds)

    def cycle_failed(self, error: str, ended: datetime, tenants: Sequence[str] | None = None) -> None:
        """The cycle itself failed (the log could not be written, say): counted, shown, and the loop goes on."""
        self.metrics.cycles.labels("error").inc()
        names = list(self.running) if tenants is None else list(tenants)
        started = min((self.running[n] for n in names if n in self.running), default=None)
        if started is not None:
            self.metrics.cycle_seconds.observe(max(0.0, (ended - started).total_seconds()))
        for name in names:
            self.running.pop(name, None)
        self.totals.cycles_failed += 1
        self._point(CyclePoint(ended, 0, 0, failed=True))
        self.last_end, self.last_cycle_error = ended, error

    def next_cycle(self, at: datetime, tenants: Sequence[str] | None = None) -> None:
        """When the next cycle is due (for `tenants`; for all when None)."""
        if tenants is None:
            self.next_at = at
            self.next_by_tenant.clear()
        else:
            self.next_by_tenant.update((name, at) for name in tenants)

    def _point(self, point: CyclePoint) -> None:
        last = self.history[-1] if self.history else None
        if (  # cycles ending in the same ten seconds share a point: a thousand tenants' loops make no thousand
            last is not None
            and not (last.failed or point.failed)
            and last.ended.replace(microsecond=0, second=last.ended.second // 10 * 10)
            == point.ended.replace(microsecond=0, second=point.ended.second // 10 * 10)
        ):
            self.history[-1] = CyclePoint(point.ended, last.events + point.events, last.delivered + point.delivered)
            return
        self.history.append(point)
        while self.history and self.history[0].ended < point.ended - timedelta(days=1):
            self.history.popleft()

    def _set_head(self, head: int) -> None:
        self._head = head
        self.metrics.log_head.set(head)

    def _heard(self, system: str, status: int | None, seconds: float, tenant: str | None) -> None:
        """Every HTTP answer (or failure to get one) is its tenant's progress (everyone's when it names none);
        PowerOffice's are counted against its limit."""
        now = self.clock()
        for name in self.running if tenant is None else (tenant,):
            self.progress[name] = now
        if system == "poweroffice":
            self._poweroffice_429s += status == 429
            starts = self._poweroffice_starts
            starts.append(now - timedelta(seconds=seconds))
            while starts and starts[0] < now - timedelta(minutes=1):
                starts.popleft()

    # ---------------------------------------------------------------------------------------------- health

    def livez(self) -> tuple[bool, str]:
        now = self.clock()
        stuck = []
        board = self.board
        for name, since in self.running.items():
            if not self._mine(name, board):
                continue  # handed over or lost: its cycle here was cut short and will not report
            quiet = now - max(since, self.progress.get(name, since))
            if quiet > self.stall:
                first = self.tenant_status[name].last is None if name in self.tenant_status else False
                which = "its first cycle" if first else "its running cycle"
                silent = int(quiet.total_seconds())
                stuck.append(f"{name}: {which} (started {since:%H:%M:%S}) has shown no progress for {silent} s")
        if stuck:
            return False, "; ".join(stuck)
        if self.running:
            return True, "ok: a cycle is running"
        if self.last_end is None:
            quiet = now - self.started
            if quiet > self.stall:
                return False, f"no cycle has started in {int(quiet.total_seconds())} s"
            return True, "starting"
        default = self.next_at or self.last_end + self.interval
        late = []
        for name in self.tenant_status:
            due = self.next_by_tenant.get(name, default)
            if name not in self.running and now - due > self.stall and self._mine(name, board):
                late.append(
                    f"{name}: no cycle has started since {due:%H:%M:%S} (due {int((now - due).total_seconds())} s ago)"
                )
        if late:
            return False, "; ".join(late)
        return True, "ok"

    def readyz(self) -> tuple[bool, str]:
        board = self.board
        if board is not None:  # a tenant another worker holds (or nobody yet) is not this worker's readiness
            return self._readyz_worker(board)
        states = [(t.name, t.state, t.last_error) for t in self.tenant_status.values()]
        bad = [name for name, state, _ in states if state in NOT_READY]
        lines = [
            f"{name}: {state}" + (f" ({err})" if state in NOT_READY and err else "") for name, state, err in states
        ]
        if bad:
            return False, "not ready: " + ", ".join(bad) + "\n" + "\n".join(lines)
        if all(state == "starting" for _, state, _ in states):
            return True, "starting\n" + "\n".join(lines)
        return True, "ready\n" + "\n".join(lines)

    def _readyz_worker(self, board: Board) -> tuple[bool, str]:
        """`/readyz` of a PostgreSQL worker: its own id first, then each tenant with its holder; only the tenants
        held here can make it unready."""
        mine = [t for t in self.tenant_status.values() if board.held_here(t.name)]
        bad = [t.name for t in mine if t.state in NOT_READY]
        lines = [
            f"{board.me.describe()}: {len(mine)} of {len(self.tenant_status)} tenants held here,"
            f" {len(board.workers)} worker(s) live, {board.share:g} PowerOffice requests/s here"
        ]
        for t in self.tenant_status.values():
            if board.held_here(t.name):
                err = f" ({t.last_error})" if t.state in NOT_READY and t.last_error else ""
                lines.append(f"{t.name}: {t.state}{err} · this worker")
            else:
                lines.append(f"{t.name}: {board.holder(t.name)}")
        if bad:
            return False, "not ready: " + ", ".join(bad) + "\n" + "\n".join(lines)
        return True, ("ready\n" if mine else "ready (holds no tenant now)\n") + "\n".join(lines)

    # ---------------------------------------------------------------------------------------------- the page

    def poweroffice_use(self, now: datetime) -> statuspage.RateUse:
        from pipeline.clients.ratelimit import max_in_window

        recent = [t for t in self._poweroffice_starts if t >= now - timedelta(minutes=1)]
        last10 = sum(1 for t in recent if t >= now - timedelta(seconds=10))
        base = now.timestamp()
        peak = max_in_window([t.timestamp() - base for t in recent]) if recent else 0
        board = self.board  # a PostgreSQL worker counts its own requests against its share of the key
        return statuspage.RateUse(
            limit=self.requests_per_second if board is None else board.share,
            last_10s=last10 / 10.0,
            peak_second=peak,
            queued=self.limiter.waiting if self.limiter is not None else 0,
            rate_limited=self._poweroffice_429s,
        )

    async def log_view(self, max_age: timedelta = LOG_VIEW_TTL) -> statuspage.LogView:
        """Quarantined and pending entities and the head, read from the log when the last read is `max_age` old."""
        now = self.clock()
        if self.log is None:
            return statuspage.LogView(head=0, held=(), pending=())
        if self._log_view is None or self._log_view_at is None or now - self._log_view_at >= max_age:
            self._log_view = await statuspage.read_log_view(self.log, list(self.tenant_status))
            self._log_view_at = now
            self._set_head(self._log_view.head)
            counts: dict[str, int] = {name: 0 for name in self.tenant_status}
            for h in self._log_view.held:
                counts[h.tenant] = counts.get(h.tenant, 0) + 1
            for name, n in counts.items():
                self.metrics.quarantined.labels(name).set(n)
        return self._log_view

    async def page(self) -> statuspage.PageView:
        view = await self.log_view()
        return statuspage.build_view(self, view, self.clock())


def create_app(status: Status) -> web.Application:
    async def livez(_: web.Request) -> web.Response:
        ok, reason = status.livez()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    async def readyz(_: web.Request) -> web.Response:
        ok, reason = status.readyz()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    async def metrics(_: web.Request) -> web.Response:
        await status.log_view(METRICS_LOG_VIEW_TTL)  # the quarantine gauges
        if status.log is not None:
            status.metrics.log_head.set(await status.log.max_position())
        board = status.board
        if board is not None:
            status.metrics.workers_live.set(len(board.workers))
            status.metrics.tenants_held.set(len(board.running))
            status.metrics.worker_share.set(board.share)
        # Tens of thousands of lines with a thousand tenants: rendered in a thread, so the loops go on meanwhile.
        body = await anyio.to_thread.run_sync(generate_latest, status.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def index(_: web.Request) -> web.Response:
        page = statuspage.render_page(await status.page())
        return web.Response(text=page, content_type="text/html", charset="utf-8")

    async def entity(request: web.Request) -> web.Response:
        tenant, name = request.match_info["tenant"], request.match_info["entity"]
        if tenant not in status.tenant_status or status.log is None:
            raise web.HTTPNotFound(text=f"no tenant named {tenant!r}\n")
        rows = await audit.history(status.log, tenant, name)
        rows = await statuspage.with_causes(status.log, rows)
        page = statuspage.render_entity(tenant, name, rows, status.clock())
        return web.Response(text=page, content_type="text/html", charset="utf-8", status=200 if rows else 404)

    app = web.Application()
    app.router.add_get("/livez", livez)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/healthz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/", index)
    app.router.add_get("/entity/{tenant}/{entity:.+}", entity)
    return app


@asynccontextmanager
async def serve(status: Status, host: str, port: int) -> AsyncIterator[str]:
    """Serve the status app; yields its base URL."""
    async with serve_app(create_app(status), host, port) as origin:
        yield origin


__all__ = ["CyclePoint", "Status", "TenantStatus", "Totals", "create_app", "serve"]
