"""Sender machinery: deliver the commands in the log to their targets and record what happened (DESIGN §3).

A `StageRunner` (`pipeline.senders.Sender` is the ready-made one) runs *stages*, one per target system
(`OngoingStage`, `StockBackStage`), for every tenant. One `run_once` does, per (stage, tenant) *lane*: load what
the log says, decide with the pure `pipeline.senders.plan.plan`, carry the plan out, record each outcome.

**The rules** (issue 8; each has a row in `tests/test_sender_plan.py` and a test in `tests/test_senders.py`):
- Only an entity's newest command is sent; older ones without a terminal outcome get `CommandSkipped(superseded)`.
- Terminal outcomes are a success, a skip and a permanent failure. A transient failure is not: the command is sent
  again next run, and the checkpoint stays below it.
- A command is never passed without a terminal outcome: the checkpoint never moves past a command that is sent,
  waits, or failed only transiently.
- A permanent failure quarantines the entity. A new command for a quarantined entity is tried (new data is the
  usual fix); the failed command itself is sent again only after `redrive`.
- Only a delivered command or `redrive` (`EntityRedriven`) ends a quarantine; a skip (superseded or not) never does.
- "Already delivered" (a skip, not a write) means the newest *attempt* for the entity, success or failure,
  succeeded with the same content: a write the server applied but answered with an error is no delivery.
- A 401/403 on a write stops that tenant's stage for this run, records nothing and quarantines nothing; it is
  reported in `TenantSummary.refused`, and the next run (after the credentials are fixed) delivers everything.
- A command that needs other entities (an order, its articles) waits while any of them is not delivered or is
  quarantined, counted `waiting` and named in `TenantSummary.waits`; it goes the moment the last of them is
  delivered, in this run or a later one.
- A stage may still decide not to send (an order already delivered or started in the warehouse): that is a
  `CommandSkipped` with the reason. Nothing is dropped without an event saying so.

**Outcomes and checkpoints.** A lane hands each outcome to the run's recorder (`pipeline.senders.recorder`) and
goes on with its next delivery; the recorder appends the outcomes the lanes handed over meanwhile in one
transaction, with each lane's checkpoint (`sender.ongoing` or `sender.poweroffice`, per tenant) computed from the
recorded outcomes only. A lane starts a delivery only while at most `in_flight` of its outcomes wait, a command
that needs other entities starts only once their outcomes are recorded, and a lane ends only once its outcomes are
in the log. The checkpoint only tells where to start reading; a re-drive or a transient failure from before it is
found again from the entity's newest events. A crash between a target's answer and the outcome's append leaves the
command without an outcome (at most `2 × in_flight` commands per lane: in flight, or waiting for the recorder), so
the next run sends it again: an upsert repeated once, never an order created twice (the order stage looks first).
A run that finds nothing to do writes nothing, except to move the checkpoint over new events of other kinds.

**Concurrency.** Lanes run side by side, at most `parallel` per stage. Within a lane a stage sets how many
deliveries run at once (`in_flight`: 1 for Ongoing, whose writes are one at a time per goods owner).
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, assert_never

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from pipeline.clients.http import Attempts
from pipeline.config import TenantSettings
from pipeline.errors import ApiError, AuthError, MappingError, StoreError, trim
from pipeline.eventlog.base import EventLog, NewEvent, StoredEvent
from pipeline.events import (
    OUTCOME_TYPES,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    EntityRedriven,
    Event,
    ReconcileRecorded,
)
from pipeline.senders.breaker import Breakers, CircuitBreaker
from pipeline.senders.plan import Attempt, History, Omit, Plan, Send, Wait, plan, terminal, wait_reason
from pipeline.senders.recorder import Recorder, Track, Watermark

logger = logging.getLogger(__name__)

# The events that say where an entity stands: outcomes and the operator's re-drive.
MARK_TYPES = (*OUTCOME_TYPES, EntityRedriven.TYPE)
# An attempt: the target was written to (or tried to be). "Already delivered" looks at the newest one.
ATTEMPT_TYPES = (CommandSucceeded.TYPE, CommandFailed.TYPE)
# What starts or ends a quarantine (a skip does neither).
STANDING_TYPES = (CommandSucceeded.TYPE, CommandFailed.TYPE, EntityRedriven.TYPE)


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
    """One tenant's counts for a run.

    `waiting`: commands that wait for other entities (an order for its articles), with `waits` naming, per
    waiting entity, what it waits for; `quarantined`: entities whose newest attempt failed permanently (not
    re-driven), at the end of the run; `refused`: set when a target refused the tenant's credentials, which
    stopped that stage for the tenant in this run (nothing was quarantined: the next run sends it all);
    `degraded`: set while a stage's circuit breaker for the tenant is open (its system looks down: its commands
    wait, with no outcome, until a probe succeeds).
    """

    delivered: int = 0
    skipped: int = 0
    failed: int = 0
    waiting: int = 0
    quarantined: int = 0
    refused: str | None = None
    degraded: str | None = None
    waits: dict[str, str] = field(default_factory=dict)

    def add(self, other: TenantSummary) -> None:
        self.delivered += other.delivered
        self.skipped += other.skipped
        self.failed += other.failed
        self.waiting += other.waiting
        self.quarantined += other.quarantined
        if other.refused is not None:
            self.refused = _joined(self.refused, other.refused)
        if other.degraded is not None:
            self.degraded = _joined(self.degraded, other.degraded)
        self.waits.update(other.waits)


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
    # the lane's circuit breaker (which also keeps the lane's write settle time), kept across runs
    breaker: CircuitBreaker = field(default_factory=CircuitBreaker)

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

    def needs(self, command: Event) -> tuple[str, ...]:
        """Entities that must be delivered (and not quarantined) before `command` may go. Pure."""
        return ()

    def identical(self, new: StoredEvent, last: StoredEvent) -> str | None:
        """The skip reason when `new` would write what `last` (the newest attempt, delivered) wrote. Pure."""
        return None

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
        breakers: Breakers | None = None,
    ) -> None:
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.log = log
        self.stages = tuple(stages)
        self.tenants = tuple(tenants)
        self.parallel = parallel
        # Pass one `Breakers` for the life of the process, so a cool-down spans runs; without, each run has its own.
        self.breakers = breakers if breakers is not None else Breakers()

    async def run_once(self, *, expired: Callable[[], bool] | None = None) -> SendSummary:
        """Deliver everything deliverable now. Raises StoreError if the log fails (after the other lanes end);
        a target's failures never raise: they become outcome events.

        Once `expired()` is true, a lane starts no new delivery but its first of the run (so every run makes
        progress); the ones in flight finish and are recorded. The commands left have no outcome, so the next run
        sends them. They are counted `waiting`."""
        summary = SendSummary({t.name: TenantSummary() for t in self.tenants})
        errors: list[Exception] = []
        # The lanes hand their outcomes to one recorder, which appends them in batches while they go on writing.
        recorder = Recorder(self.log)

        async def lane(stage: Stage, tenant: TenantSettings, limiter: anyio.CapacityLimiter) -> None:
            counts = TenantSummary()
            try:
                async with limiter:
                    breaker = self.breakers.lane(stage.name, tenant.name)
                    await _Lane(
                        self.log, stage, tenant, counts, breaker=breaker, expired=expired, recorder=recorder
                    ).run()
            except Exception as exc:  # one broken lane must not cancel the others; re-raised below
                logger.exception("sender %s for tenant %s failed", stage.name, tenant.name)
                errors.append(exc)
            summary.tenant(tenant.name).add(counts)

        async with anyio.create_task_group() as recording:
            recording.start_soon(recorder.run)
            try:
                async with anyio.create_task_group() as tg:
                    for stage in self.stages:
                        limiter = anyio.CapacityLimiter(self.parallel)
                        for tenant in self.tenants:
                            if stage.serves(tenant):
                                tg.start_soon(lane, stage, tenant, limiter)
            finally:
                recorder.close()  # every lane has flushed its outcomes (or failed): nothing more comes
        if len(errors) == 1:
            raise errors[0]
        if errors:
            raise ExceptionGroup("several sender lanes failed", errors)
        return summary


class _Lane:
    """One stage for one tenant, for one run: load what the log says, `plan`, carry the plan out."""

    def __init__(
        self,
        log: EventLog,
        stage: Stage,
        tenant: TenantSettings,
        counts: TenantSummary,
        breaker: CircuitBreaker | None = None,
        expired: Callable[[], bool] | None = None,
        *,
        recorder: Recorder,
    ) -> None:
        self.breaker = breaker if breaker is not None else CircuitBreaker()
        self.log = log
        self.expired = expired or (lambda: False)
        self.stage = stage
        self.tenant = tenant
        self.counts = counts
        self.view = LaneView(tenant, log, {}, self.breaker)
        self.quarantined: set[str] = set()
        self.checkpoint = 0
        self.watermark = Watermark(0)
        self.refused: str | None = None
        self.held = 0  # commands not sent because the breaker is open
        self.recorder = recorder
        self.track: Track | None = None  # made once the plan is recorded

    async def run(self) -> None:
        decided = await self._plan()
        await self._carry_out(decided)
        self.counts.quarantined += len(self.quarantined)
        if self.refused is not None:
            self.counts.refused = _joined(self.counts.refused, self.refused)
        if self.breaker.is_open:
            held = f" ({self.held} commands wait)" if self.held else ""
            self.counts.degraded = _joined(self.counts.degraded, f"{self.stage.name}: {self.breaker.describe()}{held}")

    # -- loading and planning ----------------------------------------------------------------------------------

    async def _plan(self) -> Plan:
        """Read the lane's state from the log, decide with `plan`, and record the skips with the checkpoint."""
        stage, name, log = self.stage, self.tenant.name, self.log
        self.checkpoint = await log.checkpoint(stage.name, name)
        head = await log.max_position()

        commands: list[StoredEvent] = []
        outcomes: dict[int, list[Event]] = defaultdict(list)
        async for stored in log.read(
            after=self.checkpoint, upto=head, tenant=name, types=(*stage.command_types, *OUTCOME_TYPES)
        ):
            if not stage.owns(stored.entity):
                continue
            if stored.type in stage.command_types:
                commands.append(stored)
            else:
                outcomes[_command_of(stored.event)].append(stored.event)

        # Where entities stand: those read above, and those whose newest mark (or newest success, failure or
        # re-drive) is a failure or a re-drive: quarantined, failed transiently or re-driven. Their heads alone are
        # read (`entity_heads`), never every entity's, so a quiet cycle costs the same however long the history.
        flagged = set()
        for newest_of in (MARK_TYPES, STANDING_TYPES):
            flagged |= await log.entities((CommandFailed.TYPE, EntityRedriven.TYPE), tenant=name, newest_of=newest_of)
        wanted = {e for e in flagged if stage.owns(e)} | {c.entity for c in commands}

        async def latest(types: Sequence[str]) -> dict[str, StoredEvent]:
            if not wanted:
                return {}
            found = await log.latest(types, tenant=name, entities=wanted)
            return {e: ev for (_, e), ev in found.items() if stage.owns(e)}

        marks = await latest(MARK_TYPES)
        attempts = await latest(ATTEMPT_TYPES)
        standing = await latest(STANDING_TYPES)
        seen = {c.entity for c in commands}
        # Entities to pick up from before the checkpoint: re-driven, or failed transiently (a log written before
        # the checkpoint stayed below such commands).
        for entity, mark in marks.items():
            if entity in seen or not (_is_redrive(mark) or _is_transient_failure(mark)):
                continue
            newest = (await log.latest(stage.command_types, tenant=name, entity=entity)).get((name, entity))
            if newest is not None:
                commands.append(newest)
                seen.add(entity)

        # What was delivered, for the entities that matter to this run only: those read or flagged, and what the
        # commands wait for (an order's articles). Never every success of the tenant.
        needed = wanted | {c.entity for c in commands} | {n for c in commands for n in stage.needs(c.event)}
        self.view.delivered = {}
        if commands and needed:
            found = await log.latest([CommandSucceeded.TYPE], tenant=name, entities=needed)
            self.view.delivered = {
                e: ev.event for (_, e), ev in found.items() if stage.owns(e) and isinstance(ev.event, CommandSucceeded)
            }

        history: dict[str, History] = {}
        for entity in marks.keys() | standing.keys():
            attempt: Attempt | None = None
            tried = attempts.get(entity)
            if entity in seen and tried is not None:
                attempted = await log.get(_command_of(tried.event))
                if attempted is not None:
                    attempt = Attempt(attempted, isinstance(tried.event, CommandSucceeded))
            newest_mark = marks.get(entity)
            history[entity] = History(
                attempt=attempt,
                delivered=entity in self.view.delivered,
                quarantined=await self._quarantined(entity, standing.get(entity)),
                redriven=newest_mark is not None and _is_redrive(newest_mark),
            )

        # A reconcile repair (a command caused by a `reconcile.recorded`) goes even when identical to what was
        # delivered: reconcile saw the target differ from it.
        causes = {c.causation for c in commands if c.causation is not None}
        repairs: set[int] = set()
        if causes:
            repairs = {
                e.position
                async for e in log.read(after=min(causes) - 1, tenant=name, types=[ReconcileRecorded.TYPE])
                if e.position in causes
            }

        def identical(new: StoredEvent, last: StoredEvent) -> str | None:
            return None if new.causation in repairs else stage.identical(new, last)

        decided = plan(
            commands,
            outcomes,
            self.checkpoint,
            head=head,
            history=history,
            needs=stage.needs,
            identical=identical,
        )
        self.quarantined = set(decided.quarantined)
        self.watermark = Watermark(head)
        for position in [s.command.position for s in decided.sends] + [w.command.position for w in decided.waits]:
            self.watermark.open(position)
        events = [
            self._outcome(skip.command, CommandSkipped(skip.command.position, skip.reason)) for skip in decided.skips
        ]
        self.counts.skipped += len(events)
        checkpoint = max(self.checkpoint, decided.checkpoint)
        if events or checkpoint != self.checkpoint:
            await log.append(events, checkpoints={(stage.name, name): checkpoint})
            self.checkpoint = checkpoint
        return decided

    async def _quarantined(self, entity: str, standing: StoredEvent | None) -> bool:
        """Whether the newest of (success, permanent failure, re-drive) for `entity` is a permanent failure.

        `standing` is the newest of (success, any failure, re-drive); only when it is a transient failure is the
        entity's history read further back (transient failures neither start nor end a quarantine)."""
        if standing is None:
            return False
        if not _is_transient_failure(standing):
            return _is_quarantine(standing)
        last: StoredEvent | None = None
        async for stored in self.log.read(tenant=self.tenant.name, entity=entity, types=STANDING_TYPES):
            if not _is_transient_failure(stored):
                last = stored
        return last is not None and _is_quarantine(last)

    # -- carrying the plan out ---------------------------------------------------------------------------------

    def _blockers(self, command: StoredEvent) -> set[str]:
        """What `command` still waits for now: needed entities not delivered, or quarantined (also in this run)."""
        return {e for e in self.stage.needs(command.event) if e not in self.view.delivered or e in self.quarantined}

    async def _carry_out(self, decided: Plan) -> None:
        # Outcomes go to the recorder; the lane goes on while at most `in_flight` of them wait to be appended.
        track = self.track = self.recorder.track(
            (self.stage.name, self.tenant.name), self.checkpoint, self.watermark, limit=self.stage.in_flight
        )
        ready: list[tuple[int, StoredEvent]] = []
        for decision in decided.decisions:
            match decision:
                case Send(command=command):
                    ready.append((command.position, command))
                case Wait(command=command):
                    ready.append((command.position, command))  # its blockers may be delivered in this run
                case Omit():
                    pass  # recorded with the plan
                case _:
                    assert_never(decision)
        heapq.heapify(ready)
        parked: dict[str, list[StoredEvent]] = defaultdict(list)
        missing: dict[int, tuple[StoredEvent, set[str]]] = {}
        running = started = 0
        failure: Exception | None = None
        finished, finished_out = anyio.create_memory_object_stream[tuple[StoredEvent, bool]](math.inf)
        with finished, finished_out:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        await track.room()
                    except Exception as exc:  # the lane's outcomes cannot be recorded: it starts nothing more
                        failure = exc
                        break  # the writes in flight finish (their outcomes are dropped)
                    while (
                        ready
                        and running < self.stage.in_flight
                        and self.refused is None
                        and not (started and self.expired())
                    ):
                        _, command = heapq.heappop(ready)
                        blockers = self._blockers(command)
                        if blockers:
                            missing[command.position] = (command, blockers)
                            for blocker in blockers:
                                parked[blocker].append(command)
                            continue
                        if not self.breaker.admits():  # the system looks down: the rest waits for the cool-down
                            heapq.heappush(ready, (command.position, command))
                            break
                        running += 1
                        started += 1
                        tg.start_soon(self._deliver, command, finished)
                    if running == 0:
                        break
                    done, succeeded = await finished_out.receive()
                    running -= 1
                    if not succeeded:
                        continue
                    for waiter in parked.pop(done.entity, []):
                        if waiter.position not in missing:
                            continue
                        _, left = missing[waiter.position]
                        left.discard(done.entity)
                        if not left:
                            del missing[waiter.position]
                            heapq.heappush(ready, (waiter.position, waiter))
            if failure is not None:
                raise failure
            await track.flush()  # the lane ends once its outcomes are in the log
            self.checkpoint = track.checkpoint
        # `ready` is left when the breaker opened or the run expired: those commands have no outcome, so they wait.
        self.held = len(ready)
        self.counts.waiting += len(ready)
        for command, left in missing.values():
            self.counts.waiting += 1
            self.counts.waits[command.entity] = wait_reason(sorted(left), self.quarantined)

    async def _deliver(self, command: StoredEvent, finished: MemoryObjectSendStream[tuple[StoredEvent, bool]]) -> None:
        assert self.track is not None
        needs = self.stage.needs(command.event)
        if needs and self.track.waits_for(needs):
            # What it depends on was delivered in this run: it goes once that is in the log, so the log never
            # holds this command's write without its dependencies' deliveries before it.
            await self.track.settled(needs)
        attempts = Attempts()
        result: Result
        try:
            result = await self.stage.deliver(command, self.view, attempts)
        except StoreError:
            raise
        except ApiError as exc:
            if isinstance(exc, AuthError) or exc.status in (401, 403):
                # The tenant's credentials, not this entity: stop the lane for this run, record nothing, so the
                # command is sent again once the credentials work.
                self.refused = f"{self.stage.name}: {exc}"
                logger.error("%s %s: credentials refused; stage stopped for this run: %s", *self._who(), exc)
                self.breaker.neutral()
                await finished.send((command, False))
                return
            result = Fail(str(exc), exc.status, permanent=not exc.transient)
        except (ValueError, MappingError) as exc:
            result = Fail(f"cannot be delivered: {exc}", None, permanent=True)
        except Exception as exc:  # a bug delivering one entity must not stop the others; the outcome says so
            logger.exception("%s: delivering %s failed unexpectedly", self.stage.name, command.entity)
            result = Fail(f"unexpected {type(exc).__name__}: {exc}", None, permanent=True)

        if isinstance(result, Fail) and not result.permanent:
            self.breaker.failed()
        elif isinstance(result, Delivered) or (isinstance(result, Fail) and result.status is not None):
            self.breaker.succeeded()  # the system answered as a working one does
        else:
            self.breaker.neutral()
        outcome: Event
        if isinstance(result, Delivered):
            outcome = CommandSucceeded(command.position, result.ids, attempts.count, _message(result.message))
            self.counts.delivered += 1
        elif isinstance(result, Skip):
            outcome = CommandSkipped(command.position, result.reason)
            self.counts.skipped += 1
        else:
            outcome = CommandFailed(
                command.position, result.status, trim(result.message), attempts.count, result.permanent
            )
            self.counts.failed += 1
            logger.warning("%s %s %s: %s", self.stage.name, self.tenant.name, command.entity, result.message)
        # Handed to the recorder; the slot takes its next command meanwhile. A crash loses at most the answers in
        # flight and those waiting for the recorder (`Track.room` bounds them): each is sent again once next run.
        self._record(command, outcome)
        if isinstance(outcome, CommandSucceeded):
            self.view.delivered[command.entity] = outcome
            self.quarantined.discard(command.entity)  # only a delivery (or a re-drive) ends a quarantine
        elif isinstance(outcome, CommandFailed) and outcome.permanent:
            self.quarantined.add(command.entity)
        await finished.send((command, isinstance(result, Delivered)))

    def _who(self) -> tuple[str, str]:
        return self.stage.name, self.tenant.name

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

    def _record(self, command: StoredEvent, event: Event) -> None:
        """Hand the outcome to the recorder, which appends it with the lane's checkpoint. A transient failure is no
        terminal outcome: the checkpoint stays below the command, so the next run reads it and sends it again."""
        assert self.track is not None
        self.track.hand(self._outcome(command, event), command.position, terminal=terminal([event]))


def _joined(first: str | None, second: str) -> str:
    return second if not first else f"{first}; {second}"


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
