"""Move a SQLite event log into PostgreSQL (`pipeline migrate-log --from pipeline.db --to postgresql://…`).

- Events keep their positions (causations and checkpoints name them), recorded times, payload text and dedupe
  keys; cursors and checkpoints are copied with them. `entity_heads` is kept by the target's own trigger.
- Idempotent: events the target already holds are left alone and the copy goes on after them, so running it
  again (after an interruption, or to pick up what the SQLite log gained since) copies only what is missing.
  A target whose events are not the start of the source's is refused before anything is written.
- Verified: the number of events, cursors and checkpoints on both sides, and a SHA-256 over every event's
  stored fields in position order, must match; otherwise `MigrationError`.

Stop `pipeline run` on the SQLite log first: events appended to it after the copy began are not in that copy
(run the command again to bring them over).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio

from pipeline.errors import StoreError
from pipeline.eventlog.postgres import PostgresEventLog
from pipeline.eventlog.sqlite import SqliteEventLog, format_time, parse_time

BATCH = 5000

_COLUMNS = (
    "position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key"
)
_INSERT = """
INSERT INTO events (position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version,
                    dedupe_key)
SELECT position, recorded_at, tenant, entity, type, schema_version, payload::json, causation, mapping_version,
       dedupe_key
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::int[], $7::text[], $8::bigint[],
            $9::int[], $10::text[])
    AS r(position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key)
ORDER BY position
"""


class MigrationError(StoreError):
    """The target cannot take the source's log, or the copy does not match it."""


@dataclass(frozen=True, slots=True)
class Migrated:
    events: int  # events in both logs after the copy
    copied: int  # events this run wrote (0 when the target was already complete)
    cursors: int
    checkpoints: int
    checksum: str  # SHA-256 (hex) over every event, the same on both sides


def _row_bytes(row: tuple[Any, ...], when: datetime) -> bytes:
    position, _, tenant, entity, type_, version, payload, causation, mapping_version, dedupe = row
    fields = (position, format_time(when), tenant, entity, type_, version, payload, causation, mapping_version, dedupe)
    return repr(fields).encode() + b"\n"


async def _sqlite_pages(source: SqliteEventLog, *, after: int = 0, upto: int | None = None) -> AsyncIterator[list[Any]]:
    while True:
        sql = f"SELECT {_COLUMNS} FROM events WHERE position > ?"
        params: list[Any] = [after]
        if upto is not None:
            sql += " AND position <= ?"
            params.append(upto)
        rows = await source.query(sql + " ORDER BY position LIMIT ?", [*params, BATCH])
        if not rows:
            return
        yield rows
        after = rows[-1][0]


async def _postgres_pages(target: PostgresEventLog, *, upto: int | None = None) -> AsyncIterator[list[Any]]:
    after = 0
    while True:
        rows = await target.query(
            f"SELECT {_COLUMNS.replace('payload', 'payload::text')} FROM events WHERE position > $1"
            + (" AND position <= $3" if upto is not None else "")
            + " ORDER BY position LIMIT $2",
            [after, BATCH] if upto is None else [after, BATCH, upto],
        )
        if not rows:
            return
        yield rows
        after = rows[-1][0]


async def _digest(pages: AsyncIterator[list[Any]], when: Callable[[Any], datetime]) -> tuple[int, str]:
    h = hashlib.sha256()
    count = 0
    async for rows in pages:
        for row in rows:
            h.update(_row_bytes(row, when(row[1])))
        count += len(rows)
    return count, h.hexdigest()


async def migrate_log(source_path: Path, target_dsn: str, *, schema: str | None = None) -> Migrated:
    """Copy the SQLite log at `source_path` into the PostgreSQL log at `target_dsn`, then verify (see module)."""
    if not await anyio.Path(source_path).exists():
        raise MigrationError(f"{source_path}: no such SQLite event log")
    async with (
        await SqliteEventLog.open(source_path) as source,
        await PostgresEventLog.open(target_dsn, schema=schema) as target,
    ):
        source_max = await source.max_position()
        target_max = await target.max_position()
        if target_max > source_max:
            raise MigrationError(
                f"{target.path} holds events up to position {target_max}, beyond {source_path}'s last ({source_max}):"
                " it is not a copy of this log"
            )
        # What the target holds must be exactly the source's beginning before anything is added to it.
        have = await _digest(_postgres_pages(target), lambda v: v)
        want = await _digest(_sqlite_pages(source, upto=target_max), parse_time)
        if have != want:
            raise MigrationError(
                f"{target.path} holds {have[0]} events that differ from the first {want[0]} of {source_path}:"
                " it is not a copy of this log"
            )
        copied = 0
        async for rows in _sqlite_pages(source, after=target_max, upto=source_max):
            cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)]
            cols[1] = [parse_time(t) for t in cols[1]]
            await target.write_raw(_INSERT, cols)
            copied += len(rows)
        cursors = await source.query("SELECT poller, tenant, value, updated_at FROM cursors")
        checkpoints = await source.query("SELECT stage, tenant, position, updated_at FROM checkpoints")
        await target.write_raw(
            "INSERT INTO cursors (poller, tenant, value, updated_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
            " ON CONFLICT (poller, tenant) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            _columns(cursors, 4),
        )
        await target.write_raw(
            "INSERT INTO checkpoints (stage, tenant, position, updated_at)"
            " SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::timestamptz[])"
            " ON CONFLICT (stage, tenant) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
            _columns(checkpoints, 4),
        )

        # Verify: counts of everything, and one checksum over every event, read back from both sides.
        source_events = await _digest(_sqlite_pages(source, upto=source_max), parse_time)
        target_events = await _digest(_postgres_pages(target, upto=source_max), lambda v: v)
        problems = []
        if source_events[0] != target_events[0]:
            problems.append(f"events: {source_events[0]} in the source, {target_events[0]} in the target")
        elif source_events[1] != target_events[1]:
            problems.append("events: the checksums differ")
        for table, key in (("cursors", "poller, tenant, value"), ("checkpoints", "stage, tenant, position")):
            mine = sorted(await source.query(f"SELECT {key} FROM {table}"))
            theirs = sorted(await target.query(f"SELECT {key} FROM {table}"))
            if not set(mine) <= set(theirs):
                problems.append(f"{table}: {len(set(mine) - set(theirs))} of {len(mine)} differ in the target")
        if problems:
            raise MigrationError(f"copy of {source_path} into {target.path} does not match: " + "; ".join(problems))
        return Migrated(source_events[0], copied, len(cursors), len(checkpoints), source_events[1])


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    cols: list[list[Any]] = [[] for _ in range(width)]
    for row in rows:
        for i, value in enumerate(row):
            cols[i].append(parse_time(value) if i == width - 1 else value)
    return cols
