"""Sender machinery: deliver the commands in the log to their targets and record what happened (DESIGN §3).

A `StageRunner` (`pipeline.senders.Sender` is the ready-made one) runs *stages*, one per target system
(`OngoingStage`, `StockBackStage`), for every tenant. One `run_once` does, per (stage, tenant) *lane*: load what
the log says, deliver what is pending, record each outcome.

**What is pending.** Per entity (`article:A1`, `order:<invoice>`, `stockback:<product>`) only its newest command
is ever sent; older unanswered ones are answered `CommandSkipped("superseded by …")`. The entity's newest
outcome-or-re-drive event (`EventLog.latest`) decides:
- none, `CommandSucceeded` or `CommandSkipped`: send its newest command that has no outcome yet, if any;
- `CommandFailed(permanent=False)` (a transient failure that used up its retries): send its newest command again;
- `CommandFailed(permanent=True)`: the entity is **quarantined**; its newer commands wait, counted `waiting`;
- `EntityRedriven` (operator): the quarantine is lifted and its newest command is sent again.
A stage may still decide not to send (identical to what was delivered, an order already delivered or started in
the warehouse): that is a `CommandSkipped` with the reason. Nothing is dropped without an event saying so.

**Outcomes and checkpoints.** Each outcome is appended with the lane's checkpoint (`sender.ongoing` or
`sender.poweroffice`, per tenant) in one transaction. The checkpoint only tells where to start reading new
commands; it is not the memory of what is still owed:
- it moves past every command with an outcome, and past commands held by a quarantine: those are found again
  from the entity's latest events when an `EntityRedriven` (or a transient failure) is seen, whatever the
  checkpoint;
- it stays *below* a command that waits for another entity (an order whose articles are not delivered yet),
  which has no event of its own: the next run reads it again. So a long-quarantined article makes later runs
  re-read the orders after that point, which costs reading, not correctness.
A crash between a target's answer and the outcome's append leaves the command without an outcome, so the next
run sends it again: an upsert repeated once, never an order created twice (the order stage looks first). A run
that finds nothing to do writes nothing, except to move the checkpoint over new events of other kinds.

**Concurrency.** Lanes run side by side, at most `parallel` per stage. Within a lane a stage sets how many
deliveries run at once (`in_flight`: 1 for Ongoing, whose writes are one at a time per goods owner). A command
whose `blockers` (entities that must have been delivered first) are not all delivered is parked and released the
moment the last of them succeeds in the same run; still parked at the end, it is counted `waiting`.
Retries with backoff happen inside the target clients (bounded attempts and time, Retry-After); a lane sees only
the final answer. One sender per log at a time: two would both deliver (harmlessly) and both record.
"""

from __future__ import annotations

import heapq
import logging
import math
import uuid
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from pipeline.clients.http import Attempts
from pipeline.config import TenantSettings
from pipeline.errors import ApiError, MappingError, StoreError, trim
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import (
    OUTCOME_TYPES,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
    Event,
)

logger = logging.getLogger(__name__)

# The events that say where an entity stands: outcomes and the operator's re-drive.
MARK_TYPES = (*OUTCOME_TYPES, EntityRedriven.TYPE)


# ---------------------------------------------------------------------------------------------------------------
# What a stage's delivery comes to


@dataclass(frozen=True, slots=True)
class Delivered:
    """The target accepted the command; `ids` are what it returned (articleSystemId, orderId, ...)."""

    ids: dict[str, Any]
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Skip:
    """The command was deliberately not sent, for `reason`."""

    reason: str


@dataclass(frozen=True, slots=True)
class Fail:
    """The command cannot be delivered. Permanent failures quarantine the entity."""

    message: str
    status: int | None = None
    permanent: bool = True


Result = Delivered | Skip | Fail


# ---------------------------------------------------------------------------------------------------------------
# Summaries


@dataclass(slots=True)
class TenantSummary:
    """One tenant's counts for a run. `waiting`: commands held by a quarantine or by undelivered articles;
    `quarantined`: entities whose last outcome is a permanent failure, at the end of the run."""

    delivered: int = 0
    skipped: int = 0
    failed: int = 0
    waiting: int = 0
    quarantined: int = 0

    def add(self, other: TenantSummary) -> None:
        self.delivered += other.delivered
        self.skipped += other.skipped
        self.failed += other.failed
        self.waiting += other.waiting
        self.quarantined += other.quarantined


@dataclass(slots=True)
class SendSummary:
    tenants: dict[str, TenantSummary] = field(default_factory=dict)

    def tenant(self, name: str) -> TenantSummary:
        return self.tenants.setdefault(name, TenantSummary())

    @property
    def total(self) -> TenantSummary:
        out = TenantSummary()
        for counts in self.tenants.values():
            out.add(counts)
        return out

    @property
    def delivered(self) -> int:
        return self.total.delivered

    @property
    def skipped(self) -> int:
        return self.total.skipped

    @property
    def failed(self) -> int:
        return self.total.failed

    @property
    def waiting(self) -> int:
        return self.total.waiting


# ---------------------------------------------------------------------------------------------------------------
# Stages


@dataclass(slots=True)
class LaneView:
    """What a stage may consult while delivering for one tenant."""

    tenant: TenantSettings
    log: EventLog
    # entity -> its latest CommandSucceeded, kept current as this run delivers.
    delivered: dict[str, CommandSucceeded]

    async def delivered_command(self, entity: str) -> StoredEvent | None:
        """The command last delivered for `entity` (None if never)."""
        success = self.delivered.get(entity)
        return await self.log.get(success.command) if success is not None else None


class Stage(ABC):
    """One target system's commands: which ones, how many at once per tenant, and how to deliver one."""

    name: str  # the checkpoint's stage name
    command_types: tuple[str, ...]
    entity_prefixes: tuple[str, ...]
    in_flight: int = 1

    def owns(self, entity: str) -> bool:
        return entity.startswith(self.entity_prefixes)

    def serves(self, tenant: TenantSettings) -> bool:
        """Whether this stage runs for `tenant` at all."""
        return True

    def blockers(self, command: StoredEvent, view: LaneView) -> set[str]:
        """Entities that must have been delivered before `command` may go (empty: it may go now)."""
        return set()

    @abstractmethod
    async def deliver(self, command: StoredEvent, view: LaneView, attempts: Attempts) -> Result:
        """Deliver one command (or decide not to). Raise ApiError as the client did; ValueError or MappingError
        for a command that can never be delivered. `attempts` must be passed to the write so it is counted."""


# ---------------------------------------------------------------------------------------------------------------
# The sender


class StageRunner:
    """Runs `stages` for `tenants` over `log`. `run_once` is not reentrant; run one sender per log."""

    def __init__(
        self,
        log: EventLog,
        stages: Sequence[Stage],
        tenants: Sequence[TenantSettings],
        *,
        parallel: int = 8,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.log = log
        self.stages = tuple(stages)
        self.tenants = tuple(tenants)
        self.parallel = parallel

    async def run_once(self) -> SendSummary:
        """Deliver everything deliverable now. Raises StoreError if the log fails (after the other lanes end);
        a target's failures never raise: they become outcome events."""
        summary = SendSummary({t.name: TenantSummary() for t in self.tenants})
        errors: list[Exception] = []

        async def lane(stage: Stage, tenant: TenantSettings, limiter: anyio.CapacityLimiter) -> None:
            counts = TenantSummary()
            try:
                async with limiter:
                    await _Lane(self.log, stage, tenant, counts).run()
            except Exception as exc:  # one broken lane must not cancel the others; re-raised below
                logger.exception("sender %s for tenant %s failed", stage.name, tenant.name)
                errors.append(exc)
            summary.tenant(tenant.name).add(counts)

        async with anyio.create_task_group() as tg:
            for stage in self.stages:
                limiter = anyio.CapacityLimiter(self.parallel)
                for tenant in self.tenants:
                    if stage.serves(tenant):
                        tg.start_soon(lane, stage, tenant, limiter)
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("several sender lanes failed", errors)
        return summary


class _Watermark:
    """The checkpoint a lane may store: just below its oldest command still open in this run, else `head`.

    Positions are only ever closed, so the value never goes down.
    """

    def __init__(self, head: int) -> None:
        self.head = head
        self._open: list[int] = []
        self._closed: set[int] = set()

    def open(self, position: int) -> None:
        heapq.heappush(self._open, position)

    def close(self, position: int) -> None:
        self._closed.add(position)

    @property
    def value(self) -> int:
        while self._open and self._open[0] in self._closed:
            self._closed.discard(heapq.heappop(self._open))
        return self._open[0] - 1 if self._open else self.head


class _Lane:
    """One stage for one tenant, for one run."""

    def __init__(self, log: EventLog, stage: Stage, tenant: TenantSettings, counts: TenantSummary) -> None:
        self.log = log
        self.stage = stage
        self.tenant = tenant
        self.counts = counts
        self.view = LaneView(tenant, log, {})
        self.pending: list[StoredEvent] = []
        self.quarantined: set[str] = set()
        self.checkpoint = 0
        self.watermark = _Watermark(0)
        self._record_lock = anyio.Lock()

    async def run(self) -> None:
        await self._load()
        await self._deliver_all()
        self.counts.quarantined += len(self.quarantined)

    # -- loading -----------------------------------------------------------------------------------------------

    async def _load(self) -> None:
        stage, name, log = self.stage, self.tenant.name, self.log
        self.checkpoint = await log.checkpoint(stage.name, name)
        head = await log.max_position()
        self.watermark = _Watermark(head)

        commands: dict[str, list[StoredEvent]] = defaultdict(list)
        answered: set[int] = set()
        async for stored in log.read(
            after=self.checkpoint, upto=head, tenant=name, types=(*stage.command_types, *OUTCOME_TYPES)
        ):
            if not stage.owns(stored.entity):
                continue
            if stored.type in stage.command_types:
                commands[stored.entity].append(stored)
            else:
                answered.add(_command_of(stored.event))

        # Where entities stand: those read above, and those whose latest mark is a failure or a re-drive (one may
        # need sending again from before the checkpoint). Only their heads are read, not every entity's.
        flagged = await log.entities((CommandFailed.TYPE, EntityRedriven.TYPE), tenant=name, newest_of=MARK_TYPES)
        wanted = {e for e in flagged if stage.owns(e)} | commands.keys()
        marks = {e: ev for (_, e), ev in (await log.latest(MARK_TYPES, tenant=name, entities=wanted)).items()}

        # Entities to pick up from before the checkpoint: re-driven, or failed transiently last time.
        for entity, last in marks.items():
            if entity in commands or not (_is_redrive(last) or _is_transient_failure(last)):
                continue
            found = await log.latest(stage.command_types, tenant=name, entity=entity)
            latest = found.get((name, entity))
            if latest is not None:
                commands[entity].append(latest)

        superseded: list[tuple[StoredEvent, StoredEvent]] = []
        for entity, cmds in commands.items():
            for command in cmds:
                if command.position > self.checkpoint:
                    self.watermark.open(command.position)
                    if command.position in answered:
                        self.watermark.close(command.position)
            mark = marks.get(entity)
            unanswered = [c for c in cmds if c.position not in answered]
            newest = unanswered[-1] if unanswered else None
            send: StoredEvent | None = None
            if mark is not None and _is_quarantine(mark):
                self.quarantined.add(entity)
                if newest is not None:
                    # Held until an operator re-drives the entity: found again from its latest command then.
                    self.watermark.close(newest.position)
                    self.counts.waiting += 1
            elif mark is not None and (_is_redrive(mark) or _is_transient_failure(mark)):
                send = newest = cmds[-1]
            else:
                send = newest
            if newest is not None:
                superseded.extend((c, newest) for c in unanswered if c.position < newest.position)
            if send is not None:
                self.pending.append(send)
        self.pending.sort(key=lambda c: c.position)
        if self.pending:  # what was delivered matters only to a lane that has something to deliver
            successes = await log.latest([CommandSucceeded.TYPE], tenant=name)
            self.view.delivered = {
                e: ev.event
                for (_, e), ev in successes.items()
                if stage.owns(e) and isinstance(ev.event, CommandSucceeded)
            }

        # Record the superseded commands (and move the checkpoint over everything already settled) at once.
        events = []
        for older, newer in superseded:
            self.watermark.close(older.position)
            events.append(
                self._outcome(older, CommandSkipped(older.position, f"superseded by the command at {newer.position}"))
            )
            self.counts.skipped += 1
        checkpoint = max(self.checkpoint, self.watermark.value)
        if events or checkpoint != self.checkpoint:
            await log.append(events, checkpoints={(stage.name, name): checkpoint})
            self.checkpoint = checkpoint

    # -- delivering --------------------------------------------------------------------------------------------

    async def _deliver_all(self) -> None:
        ready = [(c.position, c) for c in self.pending]
        heapq.heapify(ready)
        parked: dict[str, list[StoredEvent]] = defaultdict(list)
        missing: dict[int, set[str]] = {}
        running = 0
        finished, finished_out = anyio.create_memory_object_stream[tuple[StoredEvent, bool]](math.inf)
        with finished, finished_out:
            async with anyio.create_task_group() as tg:
                while True:
                    while ready and running < self.stage.in_flight:
                        _, command = heapq.heappop(ready)
                        blockers = self.stage.blockers(command, self.view)
                        if blockers:
                            missing[command.position] = set(blockers)
                            for blocker in blockers:
                                parked[blocker].append(command)
                            continue
                        running += 1
                        tg.start_soon(self._deliver, command, finished)
                    if running == 0:
                        break
                    done, succeeded = await finished_out.receive()
                    running -= 1
                    if not succeeded:
                        continue
                    for waiter in parked.pop(done.entity, []):
                        left = missing[waiter.position]
                        left.discard(done.entity)
                        if not left:
                            del missing[waiter.position]
                            heapq.heappush(ready, (waiter.position, waiter))
        self.counts.waiting += len(missing)

    async def _deliver(self, command: StoredEvent, finished: MemoryObjectSendStream[tuple[StoredEvent, bool]]) -> None:
        attempts = Attempts()
        result: Result
        try:
            result = await self.stage.deliver(command, self.view, attempts)
        except StoreError:
            raise
        except ApiError as exc:
            result = Fail(str(exc), exc.status, permanent=not exc.transient)
        except (ValueError, MappingError) as exc:
            result = Fail(f"cannot be delivered: {exc}", None, permanent=True)
        except Exception as exc:  # a bug delivering one entity must not stop the others; the outcome says so
            logger.exception("%s: delivering %s failed unexpectedly", self.stage.name, command.entity)
            result = Fail(f"unexpected {type(exc).__name__}: {exc}", None, permanent=True)

        outcome: Event
        if isinstance(result, Delivered):
            outcome = CommandSucceeded(command.position, result.ids, attempts.count, _message(result.message))
            self.counts.delivered += 1
            self.quarantined.discard(command.entity)
        elif isinstance(result, Skip):
            outcome = CommandSkipped(command.position, result.reason)
            self.counts.skipped += 1
            self.quarantined.discard(command.entity)
        else:
            outcome = CommandFailed(
                command.position, result.status, trim(result.message), attempts.count, result.permanent
            )
            self.counts.failed += 1
            if result.permanent:
                self.quarantined.add(command.entity)
            else:
                self.quarantined.discard(command.entity)
            logger.warning("%s %s %s: %s", self.stage.name, self.tenant.name, command.entity, result.message)
        # Recorded before this delivery slot takes its next command, so a crash loses at most the answers of the
        # commands in flight (one per Ongoing lane): each is repeated once on the next run, no more.
        await self._record(command, outcome)
        if isinstance(outcome, CommandSucceeded):
            self.view.delivered[command.entity] = outcome
        await finished.send((command, isinstance(result, Delivered)))

    # -- recording ---------------------------------------------------------------------------------------------

    def _outcome(self, command: StoredEvent, event: Event) -> NewEvent:
        # A success is recorded once per command (a second sender's duplicate is dropped by its key); skips and
        # failures can recur for one command across runs, so theirs are unique.
        if isinstance(event, CommandSucceeded):
            suffix = "succeeded"
        else:
            suffix = f"{'skipped' if isinstance(event, CommandSkipped) else 'failed'}/{uuid.uuid4().hex}"
        key = f"{self.tenant.name}/{command.entity}/{self.stage.name}/{command.position}/{suffix}"
        return NewEvent(self.tenant.name, command.entity, event, key, causation=command.position)

    async def _record(self, command: StoredEvent, event: Event) -> None:
        """Append the outcome and move the checkpoint, in one transaction."""
        new = self._outcome(command, event)
        async with self._record_lock:  # so checkpoint moves are committed in the order they were computed
            self.watermark.close(command.position)
            checkpoint = max(self.checkpoint, self.watermark.value)
            await self.log.append([new], checkpoints={(self.stage.name, self.tenant.name): checkpoint})
            self.checkpoint = checkpoint


def _message(message: str | None) -> str | None:
    return trim(message) if message else None


def _command_of(event: Event) -> int:
    assert isinstance(event, CommandSucceeded | CommandFailed | CommandSkipped)
    return event.command


def _is_quarantine(mark: StoredEvent) -> bool:
    return isinstance(mark.event, CommandFailed) and mark.event.permanent


def _is_transient_failure(mark: StoredEvent) -> bool:
    return isinstance(mark.event, CommandFailed) and not mark.event.permanent


def _is_redrive(mark: StoredEvent) -> bool:
    return isinstance(mark.event, EntityRedriven)
