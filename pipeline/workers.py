"""Workers: several `pipeline run` processes on one PostgreSQL log share the tenants, through the database.

SQLite keeps one process per log (`pipeline.lease`). On PostgreSQL every `Runtime` is a *worker*: it registers in
the database, holds a tenant only through a lease row, and runs only the loops of the tenants it holds. Nothing
else coordinates: no process talks to another, and no clock but the database's decides who holds what.

**Tables** (beside the append-only `events`; mutable coordination state, not part of the log, so they are created
here on first use under the log's migration lock and never copied by `migrate-log`):
- `workers (id, host, pid, command, started_at, heartbeat_at, expires_at)`: one row per live process;
- `tenant_leases (tenant, holder, acquired_at, heartbeat_at, expires_at)`: one row per held tenant; a released
  lease is a deleted row.
Every time in them is the database's (`clock_timestamp()`), so the workers' own clocks never have to agree.

**Each heartbeat** (every third of `lease_seconds`; the first at once): renew the worker row and read the live
workers, renew the leases of the tenants whose loops run here, read the whole lease table (who holds what: for
`assign`, `/readyz` and the status page), claim the wanted tenants this worker does not hold. A claim is one
statement, `INSERT … ON CONFLICT (tenant) DO UPDATE … WHERE expires_at + grace < clock_timestamp() RETURNING
tenant`: of several claimers exactly one gets a free or dead tenant, because the conflicting row is locked and its
condition checked again on its newest version.

**Who wants which tenant** (`assign`): even targets (⌊N/W⌋, one more for the N mod W workers holding most now);
each live `run` worker keeps what it holds up to its target; the rest go, in a hashed order, to the worker that
ranks highest for them (rendezvous: a hash of tenant and worker id) among those below target. Every worker computes
the same answer from the same live workers and leases; the split is even within one (20 tenants, 2 workers: 10/10),
and a join or a leave moves the fewest tenants an even split allows.

A `run` worker makes its first claim at its second heartbeat, so workers started together split the tenants
from their first cycle (a first cycle can be a long backfill, and a hand-over waits for it).

**Handing over** happens only between a tenant's cycles: a tenant no longer wanted here finishes its cycle in
progress, waits until an Ongoing write that got no answer has settled, then its lease row is deleted and the
wanted worker claims it at its next heartbeat. A graceful stop (SIGTERM) does the same for every tenant, then
deletes the worker row.

**No two writers per goods owner, ever.**
- *Self-fencing.* A tenant's loop runs inside a cancel scope whose deadline is `sent + lease − margin`, `sent`
  being this process's monotonic time when it sent the last renewal that succeeded. The database set
  `expires_at ≥ sent + lease` (the statement ran after it was sent), so a worker that can no longer renew (the
  database is away, the process stalls) has cancelled its tenants' work, writes included, `margin` (a sixth of
  the lease) before anyone else may consider the lease expired. A renewal that does not return a tenant (someone
  else holds it) cancels it at once.
- *Grace.* A lease that expired without being released (its holder died or fenced itself) is claimed only
  `lease_grace_seconds` after its expiry (default: twice the longer HTTP timeout). A write its holder started
  before fencing was then given up by the client a timeout later, and the server has had the same time again to
  finish it (the settle time the Ongoing sender uses after a write without an answer). Only a released lease is
  taken at once, and it is released only between cycles, after that settle time.
- Leases not held by a running loop here are never renewed, only claimed like anyone else's (with the grace), so
  a worker that fenced itself cannot slip back in while its own write may still be at the server.

**The key's rate across workers.** Each worker's limiter for the PowerOffice key runs at the configured rate ÷
the live workers (every command, `sync` too). A worker that registers while others are live sends nothing to
PowerOffice for one heartbeat period plus two windows, by which time the others have read the new count and
lowered their share; a worker leaving deletes its row only a window after its last request (so the others raise
their share only then); a dead worker's row counts until it expires, and its requests stopped when it fenced
itself, before that. A heartbeat that fails lowers the share as if one more worker had joined.

**`sync` on PostgreSQL** registers the same way, claims at once every tenant no live worker holds, runs one cycle
for those, releases them, and reports the others as held (`TenantReport.held_by`). `run` workers leave `sync`
out when they split the tenants.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import anyio

from pipeline.errors import StoreError

if TYPE_CHECKING:
    from pipeline.clients.ratelimit import RateLimiter
    from pipeline.config import Settings
    from pipeline.runtime import Progress, Runtime, TenantState

log = logging.getLogger(__name__)

Policy = Literal["share", "once"]

# How long a joining worker waits beyond one heartbeat period before its first PowerOffice request (two windows of
# the limiter, so the others' requests granted under their old share have left the window too).
JOIN_MARGIN_SECONDS = 2.05

# A one-off command (`sync`) gives up after this many failed heartbeats before its first claim.
ONCE_ATTEMPTS = 3

_TABLES = """
CREATE TABLE IF NOT EXISTS workers (
    id           text        PRIMARY KEY,
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    command      text        NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS tenant_leases (
    tenant       text        PRIMARY KEY,
    holder       text        NOT NULL,
    acquired_at  timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL
);
"""
_HEARTBEAT = """
INSERT INTO workers (id, host, pid, command, started_at, heartbeat_at, expires_at)
VALUES ($1, $2, $3, $4, clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => $5))
ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at, expires_at = excluded.expires_at
"""
_LIVE = """
SELECT id, host, pid, command FROM workers WHERE expires_at > clock_timestamp() ORDER BY id
"""
_RENEW = """
UPDATE tenant_leases SET heartbeat_at = clock_timestamp(), expires_at = clock_timestamp() + make_interval(secs => $3)
WHERE holder = $1 AND tenant = ANY($2::text[]) AND expires_at > clock_timestamp()
RETURNING tenant
"""
_CLAIM = """
INSERT INTO tenant_leases AS l (tenant, holder, acquired_at, heartbeat_at, expires_at)
SELECT t, $1, clock_timestamp(), clock_timestamp(), clock_timestamp() + make_interval(secs => $3)
FROM unnest($2::text[]) AS t
ON CONFLICT (tenant) DO UPDATE
SET holder = excluded.holder, acquired_at = excluded.acquired_at, heartbeat_at = excluded.heartbeat_at,
    expires_at = excluded.expires_at
WHERE l.expires_at + make_interval(secs => $4) < clock_timestamp()
RETURNING tenant
"""
_LEASES = """
SELECT l.tenant, l.holder, w.host, w.pid, l.expires_at > clock_timestamp()
FROM tenant_leases l LEFT JOIN workers w ON w.id = l.holder
"""
_RELEASE = "DELETE FROM tenant_leases WHERE holder = $1 AND tenant = ANY($2::text[])"
_LEAVE = "DELETE FROM workers WHERE id = $1"
# Rows of workers long dead (expired more than an hour ago) are swept by whoever heartbeats.
_SWEEP = "DELETE FROM workers WHERE expires_at < clock_timestamp() - interval '1 hour'"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    id: str
    host: str
    pid: int
    command: str

    def describe(self) -> str:
        return f"worker {self.id} (pid {self.pid} on {self.host})"


@dataclass(frozen=True, slots=True)
class LeaseInfo:
    tenant: str
    holder: str
    host: str | None  # None: the holder's worker row is gone
    pid: int | None
    live: bool  # False: expired, not released (its holder died or fenced itself); claimable after the grace


@dataclass
class Board:
    """What this worker last read of the lease table: for `/readyz`, the status page and `sync`'s summary."""

    me: WorkerInfo
    workers: tuple[WorkerInfo, ...] = ()
    leases: dict[str, LeaseInfo] = field(default_factory=dict)
    running: frozenset[str] = frozenset()  # tenants whose loops run here now
    share: float = 0.0  # this worker's requests per second on the PowerOffice key
    read_at: datetime | None = None

    def held_here(self, tenant: str) -> bool:
        return tenant in self.running

    def holder(self, tenant: str) -> str:
        """`this worker`, `worker <id> (pid … on host)`, `… (expired)` or `unheld`."""
        if tenant in self.running:
            return "this worker"
        lease = self.leases.get(tenant)
        if lease is None:
            return "unheld"
        if lease.holder == self.me.id:
            who = "this worker"
        elif lease.host is None:
            who = f"worker {lease.holder}"
        else:
            who = f"worker {lease.holder} (pid {lease.pid} on {lease.host})"
        return who if lease.live else f"{who}, expired: taken over after the grace"

    def held_elsewhere(self, tenant: str) -> str | None:
        """Who else holds `tenant` (None when nobody does, or this worker)."""
        if tenant in self.running:
            return None
        lease = self.leases.get(tenant)
        return None if lease is None or lease.holder == self.me.id else self.holder(tenant)


@dataclass(frozen=True, slots=True)
class Timing:
    """The lease's clock: renew every third of it, fence a sixth before it ends, take over a dead one's after grace."""

    lease: float
    grace: float

    @property
    def heartbeat(self) -> float:
        return self.lease / 3

    @property
    def margin(self) -> float:
        return self.lease / 6

    @property
    def join_wait(self) -> float:
        return self.heartbeat + JOIN_MARGIN_SECONDS

    @classmethod
    def of(cls, settings: Settings) -> Timing:
        grace = settings.lease_grace_seconds
        if grace is None:
            grace = 2 * max(settings.ongoing.timeout_seconds, settings.poweroffice.timeout_seconds)
        return cls(settings.lease_seconds, grace)


def _score(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")


def assign(
    tenants: Collection[str], workers: Collection[str], holders: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Which worker should hold each tenant (see the module docstring). Pure and deterministic: every worker that
    reads the same live set and holders computes the same answer.

    - Targets: each worker gets ⌊N/W⌋ tenants, and the N mod W workers holding the most now (ties by id) one more,
      so the split is even within one.
    - Kept: a live worker keeps what it holds (`holders`: tenant → live holder), up to its target, preferring the
      tenants that rank it highest.
    - The rest, taken in a hashed order, go to the worker ranking highest for them (rendezvous: a hash of tenant
      and worker id) among those below their target.
    So a worker joining takes only what the others hold above their new targets, and a worker leaving frees only its
    own tenants: the fewest moves an even split allows."""
    if not workers:
        return {}
    names = sorted(set(workers))
    holders = holders or {}
    base, extra = divmod(len(tenants), len(names))
    held = {w: 0 for w in names}
    for tenant in tenants:
        holder = holders.get(tenant)
        if holder in held:
            held[holder] += 1
    ranked = sorted(names, key=lambda w: (-held[w], w))
    target = {w: base + (i < extra) for i, w in enumerate(ranked)}
    load = dict.fromkeys(names, 0)
    out: dict[str, str] = {}
    for worker in names:
        mine = [t for t in tenants if holders.get(t) == worker]
        for tenant in sorted(mine, key=lambda t: (_score(t, worker), t), reverse=True)[: target[worker]]:
            out[tenant] = worker
            load[worker] += 1
    for tenant in sorted((t for t in tenants if t not in out), key=lambda t: (_score(t), t)):
        for worker in sorted(names, key=lambda w: (_score(tenant, w), w), reverse=True):
            if load[worker] < target[worker]:
                out[tenant] = worker
                load[worker] += 1
                break
    return out


def new_worker_id() -> str:
    return uuid.uuid4().hex[:12]


class Coordinator:
    """The database side of one worker: its own connection (never waiting behind the log's pool), the tables,
    heartbeats, claims, renewals and releases. Every failure is a StoreError."""

    def __init__(self, conn: Any, dsn: str, me: WorkerInfo, timing: Timing) -> None:
        self._conn = conn
        self._dsn = dsn
        self.me = me
        self.timing = timing
        self._lock = anyio.Lock()

    @classmethod
    async def open(cls, dsn: str, me: WorkerInfo, timing: Timing) -> Coordinator:
        """Connect and create the tables if they are missing (under the log's migration lock)."""
        from pipeline.eventlog.postgres import MIGRATE_LOCK

        coordinator = cls(None, dsn, me, timing)
        async with coordinator._connection("open the worker tables") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
            await conn.execute(_TABLES)
        return coordinator

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await conn.close(timeout=5)
                except Exception:  # the connection is gone either way
                    conn.terminate()

    def _connection(self, what: str) -> _Connection:
        return _Connection(self, what)

    async def heartbeat(self) -> list[WorkerInfo]:
        """Renew this worker's row (creating it); return the live workers, this one included."""
        async with self._connection("heartbeat") as conn:
            me = self.me
            await conn.execute(_HEARTBEAT, me.id, me.host, me.pid, me.command, self.timing.lease)
            rows = await conn.fetch(_LIVE)
            if _score(me.id, "sweep") % 20 == 0:
                await conn.execute(_SWEEP)
        return [WorkerInfo(str(r[0]), str(r[1]), int(r[2]), str(r[3])) for r in rows]

    async def renew(self, tenants: Collection[str]) -> set[str]:
        """Extend this worker's leases on `tenants`; returns those it still holds (unexpired)."""
        if not tenants:
            return set()
        async with self._connection("renew leases") as conn:
            rows = await conn.fetch(_RENEW, self.me.id, sorted(tenants), self.timing.lease)
        return {str(r[0]) for r in rows}

    async def claim(self, tenants: Collection[str]) -> set[str]:
        """Take the `tenants` that are free, released, or expired more than the grace ago; returns those won."""
        if not tenants:
            return set()
        async with self._connection("claim leases") as conn:
            rows = await conn.fetch(_CLAIM, self.me.id, sorted(tenants), self.timing.lease, self.timing.grace)
        return {str(r[0]) for r in rows}

    async def release(self, tenants: Collection[str]) -> None:
        """Give up leases this worker holds (between cycles only: the next claimer starts at once)."""
        if not tenants:
            return
        async with self._connection("release leases") as conn:
            await conn.execute(_RELEASE, self.me.id, sorted(tenants))

    async def leases(self) -> dict[str, LeaseInfo]:
        async with self._connection("read leases") as conn:
            rows = await conn.fetch(_LEASES)
        return {
            str(r[0]): LeaseInfo(
                str(r[0]), str(r[1]), None if r[2] is None else str(r[2]), None if r[3] is None else int(r[3]), r[4]
            )
            for r in rows
        }

    async def leave(self) -> None:
        """Delete this worker's row: the others count one worker fewer at their next heartbeat."""
        async with self._connection("leave") as conn:
            await conn.execute(_LEAVE, self.me.id)


class _Connection:
    """One statement batch on the coordinator's connection: serialised, reconnecting after a failure, and every
    asyncpg or network error turned into StoreError (the password never named)."""

    def __init__(self, owner: Coordinator, what: str) -> None:
        self.owner = owner
        self.what = what

    async def __aenter__(self) -> Any:
        from pipeline.eventlog.postgres import _asyncpg, redact

        await self.owner._lock.acquire()
        try:
            if self.owner._conn is None or self.owner._conn.is_closed():
                self.owner._conn = await _asyncpg().connect(self.owner._dsn, timeout=self.owner.timing.heartbeat)
        except BaseException as exc:
            self.owner._lock.release()
            if isinstance(exc, Exception) and _is_store_error(exc):
                raise StoreError(f"workers: cannot connect to {redact(self.owner._dsn)}: {exc}") from exc
            raise
        return self.owner._conn

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        from pipeline.eventlog.postgres import redact

        try:
            if exc is not None:
                conn, self.owner._conn = self.owner._conn, None
                if conn is not None:
                    conn.terminate()  # a statement cut short leaves the connection in no known state
                if isinstance(exc, Exception) and _is_store_error(exc):
                    raise StoreError(f"workers: {self.what} on {redact(self.owner._dsn)} failed: {exc}") from exc
        finally:
            self.owner._lock.release()


def _is_store_error(exc: BaseException) -> bool:
    from pipeline.eventlog.postgres import _is_store_error as store_error

    return store_error(exc)


@dataclass(eq=False)
class _Held:
    """A tenant whose lease this worker holds and whose loop runs here."""

    name: str
    scope: anyio.CancelScope
    leave: anyio.Event = field(default_factory=anyio.Event)  # hand over after the cycle in progress
    ended: bool = False  # its loop ended: only the release is left


class Workers:
    """One worker's side of the sharing, inside a `Runtime` on PostgreSQL: `run` replaces `Runtime.run`.

    `policy`: "share" (`pipeline run`: hold the tenants `assign` gives this worker, hand over the others) or
    "once" (`sync` and other one-off commands: claim every tenant nobody holds, at the first heartbeat only)."""

    def __init__(
        self,
        runtime: Runtime,
        coordinator: Coordinator,
        limiter: RateLimiter,
        requests_per_second: float,
        policy: Policy,
    ) -> None:
        self.runtime = runtime
        self.db = coordinator
        self.timing = coordinator.timing
        self.limiter = limiter
        self.requests_per_second = requests_per_second
        self.policy = policy
        self.board = Board(coordinator.me, share=requests_per_second)
        self._held: dict[str, _Held] = {}
        self._done: set[str] = set()  # tenants whose loops ran all their `cycles` (not claimed again)
        self._once: set[str] | None = None  # policy "once": what the first claim won
        self._valid_until = -math.inf  # monotonic: when this worker's last successful heartbeat stops counting
        self._live = 1
        self._others_live = False
        self._wake = anyio.Event()
        self.ticks = 0
        self.failed_ticks = 0

    @property
    def me(self) -> WorkerInfo:
        return self.db.me

    @classmethod
    async def open(cls, runtime: Runtime, dsn: str, limiter: RateLimiter, command: str) -> Workers:
        """Register this process as a worker (the first heartbeat). When other workers are live, the PowerOffice
        key is paused here for `Timing.join_wait`, so they lower their share before this one sends."""
        settings = runtime.settings
        me = WorkerInfo(new_worker_id(), socket.gethostname(), os.getpid(), command or "runtime")
        coordinator = await Coordinator.open(dsn, me, Timing.of(settings))
        policy: Policy = "share" if command == "run" else "once"
        workers = cls(runtime, coordinator, limiter, settings.poweroffice.requests_per_second, policy)
        sent = anyio.current_time()
        try:
            live = await coordinator.heartbeat()
        except BaseException:
            await coordinator.close()
            raise
        workers._valid_until = sent + workers.timing.lease - workers.timing.margin
        workers._joined(live)
        return workers

    def _joined(self, live: Sequence[WorkerInfo]) -> None:
        self._others_live = any(w.id != self.me.id for w in live)
        self._set_share(len(live))
        if not self._others_live:
            log.info("%s registered: the only live worker", self.me.describe())
        else:
            self.limiter.pause(self.timing.join_wait)
            log.info(
                "%s joined %d live worker(s); PowerOffice waits %.1f s for them to lower their share",
                self.me.describe(),
                len(live) - 1,
                self.timing.join_wait,
            )

    def _set_share(self, live: int) -> None:
        self._live = max(1, live)
        share = self.requests_per_second / self._live
        self.limiter.set_rate(share)
        self.board.share = share

    async def close(self) -> None:
        """Leave (the worker row goes; see `_leave`), then close the connection. Run as the `Runtime` exits: after
        its last `run`, so a reload (one `run` per configuration) does not leave and join again. A process that
        is cancelled here (killed in the tests' terms) leaves nothing: its row expires instead."""
        try:
            await self._leave()
        finally:
            await self.db.close()

    # -- the heartbeat -----------------------------------------------------------------------------------------

    def _wanted(
        self, live: Sequence[WorkerInfo], stopping: bool, leases: Mapping[str, LeaseInfo] | None = None
    ) -> set[str]:
        names = [t.name for t in self.runtime.settings.tenants]
        if stopping:
            return set()
        if self.policy == "once":
            return set(names) if self._once is None else set(self._once)
        sharing = [w.id for w in live if w.command == "run"]
        if self.me.id not in sharing:
            sharing.append(self.me.id)
        holders = {t: lease.holder for t, lease in (leases or {}).items() if lease.live}
        return {t for t, w in assign(names, sharing, holders).items() if w == self.me.id}

    async def tick(self, stopping: bool = False) -> set[str]:
        """One heartbeat: renew, read the live workers, claim what is wanted and free. Returns the tenants won
        (their loops are for the caller to start). A failure is logged, and the leases run on towards their fence."""
        sent = anyio.current_time()
        running = set(self._held)
        try:
            with anyio.fail_after(self.timing.heartbeat):
                live = await self.db.heartbeat()
                renewed = await self.db.renew(running)
                leases = await self.db.leases()
                wanted = self._wanted(live, stopping, leases) - self._done
                # A `run` worker claims from its second heartbeat on: workers started together have seen each
                # other by then, so they split the tenants from the first cycle instead of handing over after it.
                settling = self.policy == "share" and self.ticks == 0
                won = set() if settling else await self.db.claim(wanted - running)
        except (StoreError, TimeoutError) as exc:
            self.failed_ticks += 1
            self._set_share(self._live + 1)  # someone may have joined unseen: be the more careful
            left = self._valid_until - anyio.current_time()
            log.warning("%s: heartbeat failed (leases fence in %.1f s): %s", self.me.describe(), max(0.0, left), exc)
            return set()
        self.ticks += 1
        if sent > self._valid_until:  # this worker's row had lapsed: it joins again
            self._joined(live)
        else:
            self._others_live = any(w.id != self.me.id for w in live)
            self._set_share(len(live))
        self._valid_until = sent + self.timing.lease - self.timing.margin
        if self.policy == "once" and self._once is None:
            self._once = set(won)
        now = anyio.current_time()
        for name, held in self._held.items():
            if held.ended:
                continue
            if name in renewed and not held.scope.cancel_called and now < held.scope.deadline:
                held.scope.deadline = self._valid_until
            elif not held.scope.cancel_called:
                log.error("%s: lease lost (another worker holds it, or it expired); its work stops now", name)
                held.scope.cancel()
            if name not in wanted and not stopping and not held.leave.is_set():
                log.info("%s: handing over to another worker after the cycle in progress", name)
                held.leave.set()
        for name in won:  # as the table reads now
            leases[name] = LeaseInfo(name, self.me.id, self.me.host, self.me.pid, True)
        self.board = Board(
            self.me,
            tuple(live),
            leases,
            frozenset(set(self._held) | won),
            self.board.share,
            datetime.now(UTC),
        )
        return won

    def poke(self) -> None:
        """Wake the heartbeat loop (a loop ended, or the service is stopping)."""
        self._wake.set()

    # -- the loops ---------------------------------------------------------------------------------------------

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
        """Hold tenants and run their loops (`Runtime._loop`) until `stop` is set and every loop has ended, or,
        with `cycles`, until every tenant this worker wanted has run them (policy "once": the tenants it won)."""
        fatal: list[Exception] = []
        runtime = self.runtime

        async def hold(held: _Held) -> None:
            tenant = runtime.settings.tenant(held.name)
            completed = False
            try:
                with held.scope:
                    await runtime._loop(
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
                        until=held.leave,
                    )
                    completed = True
            finally:
                if not completed:
                    self._held.pop(held.name, None)
                    self.poke()
            if not completed:  # fenced or lost: never released, it expires (and waits out the grace) instead
                log.error("%s: work cancelled: the lease could not be kept", held.name)
                return
            # Still held (and renewed) until released: `run` ends only once every lease is given back.
            held.ended = True
            try:
                if cycles is not None and not held.leave.is_set() and not stop.is_set():
                    self._done.add(held.name)
                await self._settle(held.name)
                with anyio.fail_after(self.timing.heartbeat):
                    await self.db.release([held.name])
            except (StoreError, TimeoutError) as exc:
                log.warning("%s: releasing the lease failed (it expires instead): %s", held.name, exc)
            finally:
                self._held.pop(held.name, None)
                self.poke()

        async def relay() -> None:
            await stop.wait()
            self.poke()

        async with anyio.create_task_group() as tg:
            tg.start_soon(relay)
            while True:
                if not self._held and (stop.is_set() or self._finished(cycles)):
                    break
                self._wake = anyio.Event()
                began = anyio.current_time()
                for name in await self.tick(stopping=stop.is_set()):
                    if name in self._held:
                        continue
                    held = _Held(name, anyio.CancelScope(deadline=self._valid_until))
                    self._held[name] = held
                    tg.start_soon(hold, held)
                if not self._held and (stop.is_set() or self._finished(cycles)):
                    break
                if self.policy == "once" and self._once is None and self.failed_ticks >= ONCE_ATTEMPTS:
                    raise StoreError(f"{self.me.describe()}: could not claim tenants in {ONCE_ATTEMPTS} heartbeats")
                with anyio.move_on_after(max(0.0, began + self.timing.heartbeat - anyio.current_time())):
                    await self._wake.wait()
            tg.cancel_scope.cancel()
        if fatal:
            raise fatal[0]

    def _finished(self, cycles: int | None) -> bool:
        """With `cycles`: every tenant wanted here ran them (policy "once": after the first heartbeat)."""
        if cycles is None or self.ticks == 0:
            return False
        if self.policy == "once":
            return self._once is not None and self._once <= self._done
        return bool(self._done) and not (self._wanted(self.board.workers, False, self.board.leases) - self._done)

    async def _settle(self, tenant: str) -> None:
        """Wait until an Ongoing write of `tenant` that got no answer has settled (the server may still run it)."""
        breaker = self.runtime.breakers.lane("sender.ongoing", tenant)
        wait = breaker.settle_until - breaker.clock()
        if wait > 0:
            await anyio.sleep(wait)

    async def _leave(self) -> None:
        """Delete this worker's row, a window after its last PowerOffice request when others will raise their
        share on seeing it gone."""
        if self._others_live:
            await anyio.sleep(self.limiter.window)
        try:
            with anyio.fail_after(self.timing.heartbeat):
                await self.db.leave()
        except (StoreError, TimeoutError) as exc:
            log.warning("%s: leaving failed (the row expires instead): %s", self.me.describe(), exc)
