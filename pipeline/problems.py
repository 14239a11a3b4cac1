"""Standing problems: what holds an entity of a tenant now, whenever it happened (rule: counts tell the truth).

Two kinds, both read from the log alone, so a problem counts on every cycle until it is resolved, not only in the
cycle that met it:

- **quarantined**: the entity's newest permanent `command.failed` is newer than its newest `command.succeeded` and
  `entity.redriven`. Only a delivered command or a re-drive ends a quarantine: a skip or a transient failure after
  it does not.
- **standing mapping failure**: the entity's newest `mapping.failed` is about its newest observation, and nothing
  was made from that observation after the failure (no command, skip or other outcome caused by it). A newer
  observation of the record, or the projector settling the failure (a resolved `Code` conflict), ends it.

`sync` exits 1 while any tenant has one; the summary and `/metrics` show them per tenant; `audit failures` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.eventlog.base import EventLog, StoredEvent
from pipeline.events import (
    OBSERVED_TYPES,
    CommandFailed,
    CommandSucceeded,
    EntityRedriven,
    MappingFailed,
    ObservationRejected,
)


@dataclass
class StandingProblems:
    """One tenant's standing problems: the event that stands for each entity, in position order."""

    tenant: str
    quarantined: list[StoredEvent] = field(default_factory=list)
    mapping_failures: list[StoredEvent] = field(default_factory=list)
    rejected: list[StoredEvent] = field(default_factory=list)

    @property
    def unmapped(self) -> int:
        """Entities whose newest record cannot be read or mapped."""
        return len(self.mapping_failures) + len(self.rejected)

    @property
    def count(self) -> int:
        return len(self.quarantined) + self.unmapped

    def __bool__(self) -> bool:
        return self.count > 0


async def quarantined(log: EventLog, tenant: str) -> list[StoredEvent]:
    """The permanent `command.failed` holding each quarantined entity of `tenant`."""
    # Only entities whose newest success, failure or re-drive is a failure (from the heads alone): one that failed
    # long ago and was delivered since costs nothing, so the count does not grow with history.
    flagged = await log.entities(
        [CommandFailed.TYPE], tenant=tenant, newest_of=(CommandSucceeded.TYPE, CommandFailed.TYPE, EntityRedriven.TYPE)
    )
    if not flagged:
        return []
    failures = await log.latest([CommandFailed.TYPE], tenant=tenant, entities=flagged)
    out: list[StoredEvent] = []
    for key, last in failures.items():
        # One small query per failing entity: a tenant's successes are many, its failing entities few.
        releases = await log.latest([CommandSucceeded.TYPE, EntityRedriven.TYPE], tenant=tenant, entity=key[1])
        released = releases[key].position if key in releases else 0
        if last.position < released:
            continue
        assert isinstance(last.event, CommandFailed)
        if last.event.permanent:
            out.append(last)
            continue
        # A transient failure after the release: an earlier permanent one may still hold the entity.
        async for older in log.read(
            after=released, upto=last.position - 1, tenant=tenant, entity=key[1], types=[CommandFailed.TYPE]
        ):
            if isinstance(older.event, CommandFailed) and older.event.permanent:
                out.append(older)
                break
    return sorted(out, key=lambda e: e.position)


async def mapping_failures(log: EventLog, tenant: str) -> list[StoredEvent]:
    """The standing `mapping.failed` of each entity of `tenant` (see the module docstring)."""
    # Only records whose newest observation-or-failure is a failure (from the heads alone).
    flagged = await log.entities([MappingFailed.TYPE], tenant=tenant, newest_of=(*OBSERVED_TYPES, MappingFailed.TYPE))
    if not flagged:
        return []
    failed = await log.latest([MappingFailed.TYPE], tenant=tenant, entities=flagged)
    out: list[StoredEvent] = []
    for (_, entity), stored in failed.items():
        assert isinstance(stored.event, MappingFailed)
        source = stored.event.source
        newest = await log.latest(OBSERVED_TYPES, tenant=tenant, entity=entity)
        observed = newest.get((tenant, entity))
        if observed is not None and observed.position != source:
            continue  # a newer observation of the record speaks for it now
        if any(e.position > stored.position for e in await log.caused_by([source])):
            continue  # settled since: something else was made of the same observation
        out.append(stored)
    return sorted(out, key=lambda e: e.position)


async def rejections(log: EventLog, tenant: str) -> list[StoredEvent]:
    """The standing `observation.rejected` of each entity of `tenant` (see the module docstring)."""
    flagged = await log.entities(
        [ObservationRejected.TYPE], tenant=tenant, newest_of=(*OBSERVED_TYPES, ObservationRejected.TYPE)
    )
    if not flagged:
        return []
    rejected = await log.latest([ObservationRejected.TYPE], tenant=tenant, entities=flagged)
    observed = await log.latest(OBSERVED_TYPES, tenant=tenant, entities={entity for _, entity in rejected})
    return sorted(
        (e for key, e in rejected.items() if key not in observed or observed[key].position < e.position),
        key=lambda e: e.position,
    )


async def standing_problems(log: EventLog, tenant: str) -> StandingProblems:
    """Every entity of `tenant` that is quarantined, or has a standing mapping failure or rejection, now."""
    return StandingProblems(
        tenant,
        await quarantined(log, tenant),
        await mapping_failures(log, tenant),
        await rejections(log, tenant),
    )
