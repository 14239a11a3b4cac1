"""The event log contract. Stages depend on `EventLog`; `SqliteEventLog` implements it.

Guarantees every implementation gives (and `tests/eventlog_contract.py` checks):
- positions are unique, increasing, and never reused; rows are never changed or removed;
- `append` is atomic: the events, the cursor moves and the checkpoint moves it is given all land, or none do;
- an event whose dedupe key is already stored is skipped (counted in `AppendResult.skipped`), not an error;
- `read` streams in position order in bounded batches (constant memory however long the log is);
- `latest`, `entities` and a `read` of one tenant's types after a checkpoint cost what they answer, not the
  length of the log: a cycle over unchanged data costs the same on a day's log as on a year's. `entities` with a
  `newest_of` that is one of `FLAG_GROUPS` costs the entities flagged now, not every entity flagged once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple, Protocol

from pipeline.events import (
    OBSERVED_TYPES,
    OUTCOME_TYPES,
    CommandFailed,
    CommandSucceeded,
    EntityRedriven,
    Event,
    MappingFailed,
    ObservationRejected,
)


class NewEvent(NamedTuple):
    """An event to append, with its envelope. (A NamedTuple: pollers build many, and it is the cheapest
    immutable record Python has.)"""

    tenant: str
    entity: str
    event: Event
    dedupe_key: str
    causation: int | None = None
    mapping_version: int | None = None


class StoredEvent(NamedTuple):
    """An event as stored: the envelope plus the decoded event. (A NamedTuple: scans build millions.)"""

    position: int
    recorded_at: datetime
    tenant: str
    entity: str
    type: str
    schema_version: int
    event: Event
    causation: int | None
    mapping_version: int | None
    dedupe_key: str


class FlagGroup(NamedTuple):
    """Types whose newest one per entity the log keeps at hand while it is one of `flags`.

    The stores keep a small derived table (`entity_flags`: tenant, group, entity -> type, position) in the append's
    transaction: a row while the entity's newest event of `members` is of `flags`, none otherwise. So "the entities
    whose newest outcome is a failure" is an index range of the entities failing now, however many failed once.
    """

    name: str
    members: frozenset[str]
    flags: frozenset[str]


# The groups the stages ask about (the stores' migrations write the same rows into `flag_groups`; a test keeps
# them equal). A new group needs a migration that adds its rows and rebuilds `entity_flags`.
FLAG_GROUPS: tuple[FlagGroup, ...] = (
    # the sender's marks: the newest outcome or re-drive is a failure or a re-drive
    FlagGroup(
        "marks",
        frozenset((*OUTCOME_TYPES, EntityRedriven.TYPE)),
        frozenset((CommandFailed.TYPE, EntityRedriven.TYPE)),
    ),
    # quarantine: the newest success, failure or re-drive is a failure or a re-drive
    FlagGroup(
        "standing",
        frozenset((CommandSucceeded.TYPE, CommandFailed.TYPE, EntityRedriven.TYPE)),
        frozenset((CommandFailed.TYPE, EntityRedriven.TYPE)),
    ),
    # a record that could not be mapped, and not observed since
    FlagGroup("mapped", frozenset((*OBSERVED_TYPES, MappingFailed.TYPE)), frozenset((MappingFailed.TYPE,))),
    # a record that could not be read, and not observed since
    FlagGroup("read", frozenset((*OBSERVED_TYPES, ObservationRejected.TYPE)), frozenset((ObservationRejected.TYPE,))),
)


def flag_group(types: Collection[str], newest_of: Collection[str]) -> str | None:
    """The group that answers `entities(types, newest_of=newest_of)` from `entity_flags`, or None."""
    wanted, among = set(types), set(newest_of)
    for group in FLAG_GROUPS:
        if among == group.members and wanted <= group.flags:
            return group.name
    return None


@dataclass(frozen=True, slots=True)
class Derived:
    """A table derived from `events` (kept by triggers as events are appended): what it holds, as a query both
    stores run, so `rebuild-heads` can count its wrong rows and rebuild it."""

    table: str
    key: str  # the columns naming a row
    columns: str  # all its columns, in the query's order
    query: str

    def rebuild(self) -> tuple[str, str, str, str]:
        """The statements that count the rows missing, stale or extra; empty the table; fill it; count it."""
        kept = f"SELECT {self.columns} FROM {self.table}"
        wrong = (
            f"SELECT count(*) FROM (SELECT {self.key} FROM ({self.query} EXCEPT {kept}) a UNION"
            f" SELECT {self.key} FROM ({kept} EXCEPT {self.query}) b) c"
        )
        fill = f"INSERT INTO {self.table} ({self.columns}) {self.query}"
        return wrong, f"DELETE FROM {self.table}", fill, f"SELECT count(*) FROM {self.table}"


# In rebuild order: the flags follow from the heads.
DERIVED_TABLES = (
    Derived(
        "entity_heads",
        "tenant, type, entity",
        "tenant, type, entity, position",
        "SELECT tenant, type, entity, max(position) FROM events GROUP BY tenant, type, entity",
    ),
    Derived(
        "entity_flags",
        "tenant, grp, entity",
        "tenant, grp, entity, type, position",
        "SELECT n.tenant, n.grp, n.entity, e.type, n.position"
        " FROM (SELECT h.tenant, g.grp, h.entity, max(h.position) AS position"
        " FROM entity_heads h JOIN flag_groups g ON g.type = h.type GROUP BY h.tenant, g.grp, h.entity) n"
        " JOIN events e ON e.position = n.position"
        " JOIN flag_groups f ON f.grp = n.grp AND f.type = e.type"
        " WHERE f.flag",
    ),
)


@dataclass(frozen=True, slots=True)
class AppendResult:
    appended: int
    skipped: int


# (poller name, tenant) -> cursor text ; (stage name, tenant) -> log position
CursorMoves = Mapping[tuple[str, str], str]
CheckpointMoves = Mapping[tuple[str, str], int]


class EventLog(Protocol):
    async def append(
        self,
        events: Sequence[NewEvent],
        *,
        cursors: CursorMoves | None = None,
        checkpoints: CheckpointMoves | None = None,
    ) -> AppendResult:
        """Append `events` and move `cursors` / `checkpoints`, all in one transaction.

        Raises StoreError when the store fails (nothing is written then), CodecError for an unencodable event.
        """
        ...

    def read(
        self,
        *,
        after: int = 0,
        upto: int | None = None,
        tenant: str | None = None,
        entity: str | None = None,
        types: Collection[str] | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        batch_size: int = 1000,
    ) -> AsyncIterator[StoredEvent]:
        """Stream events with `after < position <= upto`, recorded in `[since, until)`, in position order."""
        ...

    async def latest(
        self,
        types: Collection[str],
        *,
        tenant: str | None = None,
        entity: str | None = None,
        entities: Collection[str] | None = None,
    ) -> dict[tuple[str, str], StoredEvent]:
        """The latest event of any of `types` for each (tenant, entity), optionally only for `entities`.

        Costs the number of entities answered, not the length of their history.
        """
        ...

    async def entities(
        self, types: Collection[str], *, tenant: str, newest_of: Collection[str] | None = None
    ) -> set[str]:
        """The tenant's entities that have an event of `types` (without reading their events); with `newest_of`,
        only those whose newest event of any of the `newest_of` types is of `types`."""
        ...

    async def order_commands_numbered(self, tenant: str, numbers: Collection[str]) -> list[StoredEvent]:
        """The newest `order.upsert_requested` of each of the tenant's order entities whose newest one has one of
        `numbers` as `body.orderNumber`, in position order (who holds an order number, without reading every
        order the tenant ever had). Costs the commands that carry those numbers."""
        ...

    async def caused_by(self, positions: Collection[int]) -> list[StoredEvent]:
        """The events whose causation is one of `positions`, in position order."""
        ...

    async def get(self, position: int) -> StoredEvent | None:
        """The event at `position`, or None."""
        ...

    async def max_position(self) -> int:
        """The largest position stored (0 for an empty log)."""
        ...

    async def cursor(self, poller: str, tenant: str) -> str | None:
        """A poller's cursor for a tenant, or None before its first successful poll."""
        ...

    async def checkpoint(self, stage: str, tenant: str) -> int:
        """The last position a stage has handled for a tenant (0 before its first run)."""
        ...

    async def close(self) -> None: ...
