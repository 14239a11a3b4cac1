"""The event log in one SQLite file (WAL mode): one writer connection, one reader connection beside it.

- Append-only is enforced by the database: triggers abort every UPDATE and DELETE on `events`.
- `append` runs one `BEGIN IMMEDIATE … COMMIT` holding one `executemany` for the events plus the cursor and
  checkpoint upserts, so a crash leaves all of it or none of it. Appends that queue for the writer meanwhile
  share the next transaction (group commit), each whole, in the order they came.
- Duplicate dedupe keys are skipped by `ON CONFLICT DO NOTHING`; the row count tells appended from skipped.
- Schema versions live in `PRAGMA user_version`; `MIGRATIONS[i]` takes a file from version i to i + 1. A file from
  a newer program is refused with `SchemaVersionError`.
- `open(mode=…)` says who may create and upgrade: `"create"` (sync, run) creates a missing file and migrates an
  older one after copying it to `<db>.v<N>.bak`; `"migrate"` (`pipeline migrate`) does the same for an existing
  file only; `"existing"` (audit, replay, redrive) refuses a missing file and an older schema, and changes nothing.
- `backup_file` copies a live log consistently (SQLite's online backup API); `untrusted_query` runs operator SQL
  on its own connection under an authorizer that allows only reading, with a time limit.
- Every sqlite3 error is translated into `StoreError` here; nothing above this module sees sqlite3.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain, repeat
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio
import anyio.lowlevel

from pipeline.errors import SchemaVersionError, StoreError
from pipeline.eventlog.base import (
    DERIVED_TABLES,
    AppendResult,
    CheckpointMoves,
    CursorMoves,
    NewEvent,
    StoredEvent,
    flag_group,
)
from pipeline.eventlog.paging import nothing, read_ahead
from pipeline.eventlog.rows import decode_rows, encode_columns

Clock = Callable[[], datetime]
OpenMode = Literal["create", "migrate", "existing"]

log = logging.getLogger(__name__)

_V1 = """
CREATE TABLE events (
    position        INTEGER PRIMARY KEY,
    recorded_at     TEXT    NOT NULL,
    tenant          TEXT    NOT NULL,
    entity          TEXT    NOT NULL,
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL,
    payload         TEXT    NOT NULL CHECK (json_valid(payload)),
    causation       INTEGER,
    mapping_version INTEGER,
    dedupe_key      TEXT    NOT NULL UNIQUE
);
CREATE INDEX events_by_entity ON events (tenant, entity, position);
CREATE INDEX events_by_type_time ON events (type, recorded_at);
CREATE INDEX events_by_time ON events (recorded_at);
CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END;
CREATE TABLE cursors (
    poller     TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (poller, tenant)
);
CREATE TABLE checkpoints (
    stage      TEXT    NOT NULL,
    tenant     TEXT    NOT NULL,
    position   INTEGER NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (stage, tenant)
);
"""

# v2: audit follows causation downwards (observation → command → outcome). Observations have no causation, so a
# partial index costs the pollers' appends nothing.
_V2 = """
CREATE INDEX events_by_causation ON events (causation) WHERE causation IS NOT NULL;
"""

# v3: a cycle's reads cost what changed, not the history.
# - `entity_heads` holds the newest position per (tenant, type, entity): `latest()` reads it instead of grouping
#   the tenant's whole history. It is derived data, kept by a trigger in the append's own transaction (a skipped
#   duplicate inserts no row, so fires nothing) and rebuilt from `events` by this migration and by
#   `SqliteEventLog.rebuild_heads` (`pipeline audit rebuild-heads`).
# - `events_by_tenant_type` (its rows end in the position, as every index's do) serves "this tenant's events of
#   these types after my checkpoint" as index ranges, whatever other tenants appended meanwhile.
_V3 = """
CREATE TABLE entity_heads (
    tenant   TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    entity   TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tenant, type, entity)
) WITHOUT ROWID;
INSERT INTO entity_heads (tenant, type, entity, position)
    SELECT tenant, type, entity, max(position) FROM events GROUP BY tenant, type, entity;
CREATE TRIGGER events_keep_heads AFTER INSERT ON events
BEGIN
    INSERT INTO entity_heads (tenant, type, entity, position) VALUES (NEW.tenant, NEW.type, NEW.entity, NEW.position)
    ON CONFLICT (tenant, type, entity) DO UPDATE SET position = excluded.position
    WHERE excluded.position > entity_heads.position;
END;
CREATE INDEX events_by_tenant_type ON events (tenant, type);
"""

# v4: "the entities whose newest outcome is a failure" (and whose newest observation-or-mapping-failure is a failure,
# and so on: `FLAG_GROUPS` in base.py) costs the entities flagged now, not every entity that ever failed (orders
# are entities forever, so those grow with history). `entity_flags` is derived data like `entity_heads`: a trigger
# keeps it in the append's transaction, a row per (tenant, group, entity) while the entity's newest event of the
# group's types is one of the group's flag types; it is rebuilt from the heads by this migration and by
# `rebuild_heads`.
_V4 = """
CREATE TABLE flag_groups (
    grp  TEXT    NOT NULL,
    type TEXT    NOT NULL,
    flag INTEGER NOT NULL,
    PRIMARY KEY (type, grp)
) WITHOUT ROWID;
INSERT INTO flag_groups (grp, type, flag) VALUES
    ('marks', 'command.succeeded', 0), ('marks', 'command.failed', 1), ('marks', 'command.skipped', 0),
    ('marks', 'entity.redriven', 1),
    ('standing', 'command.succeeded', 0), ('standing', 'command.failed', 1), ('standing', 'entity.redriven', 1),
    ('mapped', 'product.observed', 0), ('mapped', 'invoice.observed', 0), ('mapped', 'stock.observed', 0),
    ('mapped', 'mapping.failed', 1),
    ('read', 'product.observed', 0), ('read', 'invoice.observed', 0), ('read', 'stock.observed', 0),
    ('read', 'observation.rejected', 1);
CREATE TABLE entity_flags (
    tenant   TEXT    NOT NULL,
    grp      TEXT    NOT NULL,
    entity   TEXT    NOT NULL,
    type     TEXT    NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (tenant, grp, entity)
) WITHOUT ROWID;
INSERT INTO entity_flags (tenant, grp, entity, type, position)
    SELECT n.tenant, n.grp, n.entity, e.type, n.position
    FROM (SELECT h.tenant, g.grp, h.entity, max(h.position) AS position
          FROM entity_heads h JOIN flag_groups g ON g.type = h.type GROUP BY h.tenant, g.grp, h.entity) n
    JOIN events e ON e.position = n.position
    JOIN flag_groups f ON f.grp = n.grp AND f.type = e.type
    WHERE f.flag;
CREATE INDEX events_by_order_number ON events (tenant, json_extract(payload, '$.body.orderNumber'))
    WHERE type = 'order.upsert_requested';
CREATE TRIGGER events_keep_flags AFTER INSERT ON events
BEGIN
    DELETE FROM entity_flags WHERE tenant = NEW.tenant AND entity = NEW.entity AND position < NEW.position
        AND grp IN (SELECT grp FROM flag_groups WHERE type = NEW.type AND NOT flag);
    INSERT INTO entity_flags (tenant, grp, entity, type, position)
        SELECT NEW.tenant, grp, NEW.entity, NEW.type, NEW.position FROM flag_groups WHERE type = NEW.type AND flag
    ON CONFLICT (tenant, grp, entity) DO UPDATE SET type = excluded.type, position = excluded.position
        WHERE excluded.position > entity_flags.position;
END;
"""

# (v4 also: `events_by_order_number`, so the projector finds who holds an order number without loading every order
# of the tenant: a partial index over the order commands only.)

# `entity_flags` as derived from `entity_heads` (so from `events`): per (tenant, group, entity) the newest member
# event, kept when it is a flag.
# MIGRATIONS[i] brings a database from user_version i to i + 1. Append new entries; never edit old ones.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)

# Bytes the `-wal` file is truncated to after a checkpoint (see `SqliteEventLog.open`).
WAL_SIZE_LIMIT = 16 * 1024 * 1024

_INSERT = (
    "INSERT INTO events (recorded_at, tenant, entity, type, schema_version, payload, causation,"
    " mapping_version, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING"
)
# An append inserts up to this many rows per INSERT statement (multi-row VALUES). Each execution of a statement
# has a fixed cost besides its rows (for this one, with its triggers and conflict clause, about as much as a row's
# own B-tree work): `executemany` pays it per row, this per 64 rows. 40% less time per event in
# `benchmarks/eventlog.py`; 64 × 9 parameters stay far below SQLite's limit.
_ROWS_PER_INSERT = 64


@functools.cache
def _insert_sql(rows: int) -> str:
    head, tail = _INSERT.split(" VALUES ")
    values, conflict = tail.split(" ON CONFLICT ")
    return f"{head} VALUES {', '.join([values] * rows)} ON CONFLICT {conflict}"


def _insert(conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> int:
    """Insert `rows` (in order, each its 9 columns) in statements of 64, then 32, 16, … rows for the rest (seven
    statement shapes in all, each prepared once: sqlite3 caches them); returns how many were not duplicates."""
    appended, start, size = 0, 0, _ROWS_PER_INSERT
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start : start + size]
        appended += conn.execute(_insert_sql(size), list(chain.from_iterable(chunk))).rowcount
        start += size
    return appended


_COLUMNS = (
    "position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key"
)
# What reads select to decode events: `_COLUMNS`, the payload as bytes. The stored text is UTF-8 already; as bytes
# it is copied, not decoded into a str that orjson would then encode back to UTF-8 to parse.
_EVENT_COLUMNS = _COLUMNS.replace("payload", "CAST(payload AS BLOB)")


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_time(when: datetime) -> str:
    """Fixed-width UTC text, so that string order is time order in SQL."""
    if when.tzinfo is None:
        raise ValueError("naive datetime: the log records UTC times only")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@functools.lru_cache(maxsize=256)
def parse_time(text: str) -> datetime:
    # Events of one append share their recorded time, so a small cache saves most of the parsing on scans.
    return datetime.fromisoformat(text)


def recorded_time(value: str | datetime) -> datetime:
    """A `recorded_at` column as either store returns it from `query` (SQLite: this module's text; PostgreSQL: a
    datetime), as a datetime."""
    return value if isinstance(value, datetime) else parse_time(value)


def _rows_to_events(rows: Sequence[sqlite3.Row | tuple[Any, ...]]) -> list[StoredEvent]:
    """Decode a page of rows (`_EVENT_COLUMNS`) into stored events."""
    return decode_rows(rows, parse_time)


def _row_to_event(row: sqlite3.Row | tuple[Any, ...]) -> StoredEvent:
    return _rows_to_events([row])[0]


def _select_events(
    conn: sqlite3.Connection,
    sql: str,
    params: Sequence[Any],
    decode: Callable[[Sequence[Any]], list[StoredEvent]],
) -> list[StoredEvent]:
    return decode(conn.execute(sql, params).fetchall())


async def _on_thread(conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any) -> Any:
    """Run `fn(sqlite3_connection, *args)` on the connection's own thread, as one unit.

    aiosqlite's public API would need one await per statement, and a cancellation between two of them could
    leave a transaction open; its `_execute` (private, stable since 0.17; pinned in pyproject) runs a whole
    function on the thread instead. If the awaiting task is cancelled, the function still finishes there,
    so a transaction is always committed or rolled back whole.
    """
    raw = conn._conn
    return await conn._execute(fn, raw, *args)  # type: ignore[no-untyped-call]


def _migrate(conn: sqlite3.Connection, path: str, mode: OpenMode = "create") -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has schema version {version}; this pipeline understands up to {SCHEMA_VERSION}."
            " Upgrade pipeline to open it."
        )
    if version < SCHEMA_VERSION and mode == "existing":
        raise SchemaVersionError(
            f"{path} has schema version {version}, older than this pipeline's {SCHEMA_VERSION}; this command does not"
            " upgrade it. Run `pipeline migrate` (it keeps a backup copy first), or let `sync`/`run` do it."
        )
    if 0 < version < SCHEMA_VERSION:
        target_file = backup_path(Path(path), version)
        _backup(conn, target_file)
        log.warning(
            "upgrading the event log %s from schema v%d to v%d; the v%d file is kept as %s",
            path,
            version,
            SCHEMA_VERSION,
            version,
            target_file,
        )
    for target in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split(MIGRATIONS[target]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def backup_path(database: Path, version: int) -> Path:
    """Where the copy taken before an upgrade from `version` goes: `<db>.v<version>.bak`."""
    return database.with_name(f"{database.name}.v{version}.bak")


def _backup(source: sqlite3.Connection, target: Path) -> None:
    """Copy `source` to `target` in one step (a consistent snapshot), via a temporary file renamed into place."""
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    copy = sqlite3.connect(partial)
    try:
        source.backup(copy)  # pages=-1: all pages in one step, under one read transaction
    finally:
        copy.close()
    os.replace(partial, target)


def _reading(path: Path) -> sqlite3.Connection:
    """A connection to an existing file that refuses writes. (Not `mode=ro`: a read-only connection that closes
    last leaves the `-wal` and `-shm` files behind.)"""
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    conn.execute("PRAGMA query_only = ON")
    return conn


def _point_reader(path: Path) -> sqlite3.Connection:
    """The log's connection for point reads on the event loop's thread: refuses writes, never waits for a lock.
    (Used by one event loop at a time; `check_same_thread` off so a log opened before a loop starts still works.)"""
    conn = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def schema_version(path: str | Path) -> int:
    """The schema version of an existing log file, read without changing anything. Raises StoreError."""
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no event log at {p}; run sync first")
    try:
        conn = _reading(p)
        try:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {p}: {exc}") from exc


def backup_file(database: str | Path, target: str | Path) -> None:
    """A consistent copy of the log at `database`, even while another process appends (online backup API).

    Refuses a missing source and an existing target. Blocking: run it on a worker thread.
    """
    source_path, target_path = Path(database), Path(target)
    if not source_path.is_file():
        raise StoreError(f"no event log at {source_path}; run sync first")
    if target_path.exists():
        raise StoreError(f"{target_path} exists already; choose a new file name")
    try:
        source = _reading(source_path)
        try:
            _backup(source, target_path)
        finally:
            source.close()
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(f"backup of {source_path} to {target_path} failed: {exc}") from exc


# What operator SQL may do: read tables, call functions, recurse, and read (not set) a few pragmas.
_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_READ_PRAGMAS = {"user_version", "schema_version", "page_count", "page_size", "freelist_count", "journal_mode"}
_ARG_PRAGMAS = {"table_info", "table_xinfo", "index_list", "index_info", "index_xinfo", "table_list"}


def _read_only(action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None) -> int:
    if action in _READ_ACTIONS:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA and (arg1 in _ARG_PRAGMAS or (arg1 in _READ_PRAGMAS and arg2 is None)):
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def untrusted_query(path: str | Path, sql: str, *, timeout: float) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Run operator SQL against the log: only reading is allowed (no ATTACH, VACUUM, writes or pragma changes),
    and the query is stopped after `timeout` seconds. Returns (column names, rows). Blocking: use a worker thread.
    """
    p = Path(path)
    if not p.is_file():
        raise StoreError(f"no event log at {p}; run sync first")
    deadline = time.monotonic() + timeout
    try:
        conn = _reading(p)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {p}: {exc}") from exc
    try:
        conn.set_authorizer(_read_only)
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        cursor = conn.execute(sql)
        rows = [tuple(r) for r in cursor.fetchall()]
        names = [d[0] for d in cursor.description or ()]
        return names, rows
    except sqlite3.OperationalError as exc:
        if str(exc) == "interrupted":
            raise StoreError(f"query stopped after {timeout:g} s (--timeout)") from exc
        raise StoreError(f"query refused: {exc}") from exc
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise StoreError(f"query refused: {exc}") from exc
    finally:
        conn.close()


@dataclass(eq=False, slots=True)
class _Job:
    """One caller's append, waiting for the writer: its rows, and what became of them."""

    rows: list[tuple[Any, ...]]
    cursor_rows: list[tuple[Any, ...]]
    checkpoint_rows: list[tuple[Any, ...]]
    outcome: AppendResult | sqlite3.Error | None = None


def _append_group(conn: sqlite3.Connection, jobs: list[_Job]) -> list[AppendResult | sqlite3.Error]:
    """Write `jobs` in one transaction; if that fails, each in its own, so one bad append fails only its caller.

    Runs on the writer's thread: no await between the statements of a transaction.
    """
    if len(jobs) > 1:
        try:
            return _in_transaction(conn, jobs)
        except sqlite3.Error:
            pass  # e.g. one append breaks a constraint: find out which, alone
    out: list[AppendResult | sqlite3.Error] = []
    for job in jobs:
        try:
            out.extend(_in_transaction(conn, [job]))
        except sqlite3.Error as exc:
            out.append(exc)
    return out


def _in_transaction(conn: sqlite3.Connection, jobs: list[_Job]) -> list[AppendResult | sqlite3.Error]:
    results: list[AppendResult | sqlite3.Error] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for job in jobs:
            appended = _insert(conn, job.rows)
            if job.cursor_rows:
                conn.executemany(
                    "INSERT INTO cursors (poller, tenant, value, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (poller, tenant) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    job.cursor_rows,
                )
            if job.checkpoint_rows:
                conn.executemany(
                    "INSERT INTO checkpoints (stage, tenant, position, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (stage, tenant) DO UPDATE SET position = excluded.position,"
                    " updated_at = excluded.updated_at",
                    job.checkpoint_rows,
                )
            results.append(AppendResult(appended, len(job.rows) - appended))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return results


@dataclass(frozen=True, slots=True)
class HeadsRebuilt:
    heads: int  # rows in entity_heads after the rebuild
    wrong: int  # rows of entity_heads and entity_flags that were missing, stale or extra (0: the triggers kept them)
    flags: int = 0  # rows in entity_flags after the rebuild


def _rebuild_heads_tx(conn: sqlite3.Connection) -> HeadsRebuilt:
    conn.execute("BEGIN IMMEDIATE")
    try:
        wrong, counts = 0, []
        for derived in DERIVED_TABLES:
            count_wrong, empty, fill, count = derived.rebuild()
            wrong += conn.execute(count_wrong).fetchone()[0]
            conn.execute(empty)
            conn.execute(fill)
            counts.append(conn.execute(count).fetchone()[0])
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    heads, flags = counts
    return HeadsRebuilt(int(heads), int(wrong), int(flags))


def _split(script: str) -> list[str]:
    """Split a migration script into statements (triggers contain `;` inside BEGIN … END)."""
    out: list[str] = []
    buf = ""
    for part in script.split(";"):
        buf += part + ";"
        if sqlite3.complete_statement(buf):
            if buf.strip(" \n;"):
                out.append(buf.strip())
            buf = ""
    return out


def _filters(
    *,
    tenant: str | None = None,
    entity: str | None = None,
    types: Collection[str] | None = None,
    since: str | None = None,
    until: str | None = None,
) -> tuple[list[str], list[Any]]:
    """SQL conditions and their parameters for the filters that are set (in this order)."""
    where: list[str] = []
    params: list[Any] = []
    for column, value in (("tenant", tenant), ("entity", entity)):
        if value is not None:
            where.append(f"{column} = ?")
            params.append(value)
    if types is not None:
        names = list(types)
        where.append(f"type IN ({', '.join('?' * len(names))})")
        params.extend(names)
    if since is not None:
        where.append("recorded_at >= ?")
        params.append(since)
    if until is not None:
        where.append("recorded_at < ?")
        params.append(until)
    return where, params


# SQLite caps the number of parameters per statement; lists longer than this are asked in chunks.
_CHUNK = 500
# Up to this many named entities, `latest` is a point read on the event loop's thread (a few index pages each).
_POINT_ENTITIES = 20


def latest_sql(
    types: Collection[str],
    *,
    tenant: str | None = None,
    entity: str | None = None,
    entities: Collection[str] | None = None,
) -> tuple[str, list[Any]]:
    """The query behind `latest`: newest head per (tenant, entity) over `types`, then those rows of `events`."""
    where, params = _filters(tenant=tenant, entity=entity, types=types)
    if entities is not None:
        names = list(entities)
        where.append(f"entity IN ({', '.join('?' * len(names))})")
        params.extend(names)
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE position IN ("
        f"SELECT max(position) FROM entity_heads WHERE {' AND '.join(where)} GROUP BY tenant, entity)"
    )
    return sql, params


def entities_sql(
    types: Collection[str], *, tenant: str, newest_of: Collection[str] | None = None
) -> tuple[str, list[Any]]:
    """The query behind `entities`: for a `newest_of` of `FLAG_GROUPS`, the range of the entities flagged now in
    `entity_flags`; else heads only, one index search per type (and per entity for `newest_of`)."""
    names = list(types)
    group = flag_group(names, newest_of) if newest_of is not None else None
    if group is not None:
        marks = ", ".join("?" * len(names))
        sql = f"SELECT entity FROM entity_flags WHERE tenant = ? AND grp = ? AND type IN ({marks})"
        return sql, [tenant, group, *names]
    sql = f"SELECT DISTINCT entity FROM entity_heads h WHERE tenant = ? AND type IN ({', '.join('?' * len(names))})"
    params: list[Any] = [tenant, *names]
    if newest_of is not None:
        among = list(newest_of)
        sql += (
            " AND position = (SELECT max(position) FROM entity_heads WHERE tenant = h.tenant"
            f" AND type IN ({', '.join('?' * len(among))}) AND entity = h.entity)"
        )
        params.extend(among)
    return sql, params


def order_numbers_sql(tenant: str, numbers: Sequence[str]) -> tuple[str, list[Any]]:
    """The query behind `order_commands_numbered`: a range of `events_by_order_number` per number, each row kept
    only if it is its entity's head. (The type is written out: SQLite uses a partial index only for a literal; and
    the index is named, so no statistics can turn this into a walk of all the tenant's order commands.)"""
    marks = ", ".join("?" * len(numbers))
    sql = (
        f"SELECT {_EVENT_COLUMNS} FROM events e INDEXED BY events_by_order_number"
        " WHERE e.type = 'order.upsert_requested' AND e.tenant = ?"
        f" AND json_extract(e.payload, '$.body.orderNumber') IN ({marks})"
        " AND e.position = (SELECT h.position FROM entity_heads h WHERE h.tenant = e.tenant"
        " AND h.type = 'order.upsert_requested' AND h.entity = e.entity)"
    )
    return sql, [tenant, *numbers]


def read_sql(
    *,
    after: int = 0,
    upto: int | None = None,
    tenant: str | None = None,
    entity: str | None = None,
    types: Collection[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[str, list[Any]]:
    """The query behind one page of `read` (its last parameter, the page size, is left to the caller).

    One tenant's events of several types are read as one `(tenant, type)` index range per type, merged in position
    order (UNION ALL … ORDER BY): a page costs its own rows, never a sort of everything after the checkpoint.
    """
    names = list(dict.fromkeys(types)) if types is not None else []
    if tenant is not None and entity is None and len(names) > 1:
        parts = [read_sql(after=after, upto=upto, tenant=tenant, types=[n], since=since, until=until) for n in names]
        union = " UNION ALL ".join(sql.removesuffix(" ORDER BY position LIMIT ?") for sql, _ in parts)
        return f"{union} ORDER BY position LIMIT ?", [p for _, params in parts for p in params]
    where, params = _filters(
        tenant=tenant,
        entity=entity,
        types=types,
        since=format_time(since) if since else None,
        until=format_time(until) if until else None,
    )
    where.insert(0, "position > ?")
    params.insert(0, after)
    if upto is not None:
        where.append("position <= ?")
        params.append(upto)
    return f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT ?", params


class SqliteEventLog:
    """`EventLog` on SQLite. Open with `await SqliteEventLog.open(path)`; close with `await log.close()`."""

    def __init__(
        self,
        path: Path,
        writer: aiosqlite.Connection,
        reader: aiosqlite.Connection,
        clock: Clock,
        point: sqlite3.Connection | None = None,
    ) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        # Point reads (a cursor, a checkpoint, the head, the entities flagged now) run on the calling thread over
        # this connection: an index lookup of a few pages costs ~5 µs here against ~50 µs for the hop to the
        # reader's thread and back (several times that while the loop is busy with HTTP), and a quiet cycle is
        # mostly such reads. It never waits for a lock (busy_timeout 0): a busy answer sends that read to the
        # reader's thread, which may wait. Scans and anything that decodes events stay on the reader's thread.
        self._point = point
        self._clock = clock
        self._write_lock = anyio.Lock()
        self._queue: list[_Job] = []  # appends waiting for the writer (see `append`)

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = utc_now, mode: OpenMode = "create") -> SqliteEventLog:
        """Open the log; `mode` says whether a missing file may be created and an older one upgraded (see the
        module notes). Raises SchemaVersionError for a schema this mode can't use, StoreError else."""
        p = Path(path)
        if mode != "create" and not await anyio.Path(p).is_file():
            raise StoreError(f"no event log at {p}; run sync first")
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None

        async def close_opened() -> None:
            for conn in (reader, writer):
                if conn is not None:
                    await conn.close()

        try:
            if mode == "create":
                p.parent.mkdir(parents=True, exist_ok=True)
            writer = await aiosqlite.connect(p, isolation_level=None, timeout=30)
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute("PRAGMA synchronous = NORMAL")
            await writer.execute("PRAGMA busy_timeout = 30000")
            # The WAL is checkpointed every `wal_autocheckpoint` pages (SQLite's default, 1000: ~4 MB) by the
            # committing writer; after a checkpoint the file is cut back to this size, so one big transaction (a
            # backfill) does not leave a file that size behind for the rest of a long `run`.
            await writer.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            await _on_thread(writer, _migrate, str(p), mode)
            reader = await aiosqlite.connect(p, isolation_level=None, timeout=30)
            await reader.execute("PRAGMA busy_timeout = 30000")
            await reader.execute("PRAGMA query_only = ON")
            point = _point_reader(p)
        except sqlite3.Error as exc:
            await close_opened()
            raise StoreError(f"cannot open event log {p}: {exc}") from exc
        except BaseException:
            await close_opened()
            raise
        return cls(p, writer, reader, clock, point)

    async def close(self) -> None:
        if self._point is not None:
            self._point.close()
            self._point = None
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> SqliteEventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------------ writing

    async def append(
        self,
        events: Sequence[NewEvent],
        *,
        cursors: CursorMoves | None = None,
        checkpoints: CheckpointMoves | None = None,
    ) -> AppendResult:
        """Append events and move cursors/checkpoints in one transaction (see `EventLog.append`)."""
        if not events and not cursors and not checkpoints:
            return AppendResult(0, 0)
        recorded = format_time(self._clock())
        # Encode before taking the lock: a CodecError writes nothing.
        rows = list(zip(repeat(recorded), *encode_columns(events)))
        cursor_rows = [(poller, tenant, value, recorded) for (poller, tenant), value in (cursors or {}).items()]
        checkpoint_rows = [(stage, tenant, pos, recorded) for (stage, tenant), pos in (checkpoints or {}).items()]
        job = _Job(rows, cursor_rows, checkpoint_rows)
        self._queue.append(job)
        try:
            async with self._write_lock:
                if job.outcome is None:
                    # Group commit: this holder writes every append queued meanwhile, each in its own order, in
                    # one transaction (lanes recording outcomes side by side share one commit instead of queueing
                    # for one each). Shielded: the other callers' answers must be handed out even if this one is
                    # cancelled, and the transaction finishes on the thread anyway.
                    group, self._queue = self._queue, []
                    with anyio.CancelScope(shield=True):
                        outcomes: list[AppendResult | sqlite3.Error] = await _on_thread(
                            self._writer, _append_group, group
                        )
                    for queued, outcome in zip(group, outcomes, strict=True):
                        queued.outcome = outcome
        except BaseException:
            if job in self._queue:  # cancelled before anyone wrote it: it never will be
                self._queue.remove(job)
            raise
        if isinstance(job.outcome, sqlite3.Error):
            raise StoreError(f"append to {self.path} failed: {job.outcome}") from job.outcome
        assert job.outcome is not None
        return job.outcome

    async def rebuild_heads(self) -> HeadsRebuilt:
        """Rebuild `entity_heads` (and `entity_flags` from it) from `events` in one transaction; say how many rows
        were wrong or missing.

        The table is derived data, kept by a trigger as events are appended: this is for an operator who
        doubts it (`pipeline audit rebuild-heads`), and costs one pass over the log.
        """
        async with self._write_lock:
            try:
                result: HeadsRebuilt = await _on_thread(self._writer, _rebuild_heads_tx)
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"rebuilding entity_heads in {self.path} failed: {exc}") from exc

    async def checkpoint_wal(self) -> int:
        """Checkpoint the WAL into the database and truncate it; returns the `-wal` file's size afterwards."""
        async with self._write_lock:
            try:
                await _on_thread(self._writer, lambda conn: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())
            except sqlite3.Error as exc:
                raise StoreError(f"checkpointing the WAL of {self.path} failed: {exc}") from exc
        wal = self.path.with_name(self.path.name + "-wal")
        return wal.stat().st_size if wal.exists() else 0

    # ------------------------------------------------------------------------------------------------ reading

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

    async def _fetch_point(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Rows of a read that costs a few index pages: here on the loop's thread (see `__init__`), or on the
        reader's thread when SQLite answers busy (another process holds the file exclusively, or recovers it)."""
        await anyio.lowlevel.checkpoint_if_cancelled()
        if self._point is not None:
            try:
                return self._point.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise StoreError(f"read from {self.path} failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StoreError(f"read from {self.path} failed: {exc}") from exc
        return await self._fetch(sql, params)

    async def _fetch_events(
        self, sql: str, params: Sequence[Any], decode: Callable[[Sequence[Any]], list[StoredEvent]]
    ) -> list[StoredEvent]:
        """Select rows of `_EVENT_COLUMNS` and decode them, both on the reader's thread, so that neither holds up
        the event loop."""
        try:
            events: list[StoredEvent] = await _on_thread(self._reader, _select_events, sql, params, decode)
            return events
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

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
        """Stream matching events in position order, `batch_size` rows per query (keyset paging)."""
        if (types is not None and not types) or (upto is not None and upto <= after):
            return nothing()
        decode = _rows_to_events

        def page(start: int) -> asyncio.Future[list[StoredEvent]]:
            sql, params = read_sql(
                after=start, upto=upto, tenant=tenant, entity=entity, types=types, since=since, until=until
            )
            return asyncio.ensure_future(self._fetch_events(sql, [*params, batch_size], decode))

        # The next page is read and decoded on the reader's thread while this one is handed out here.
        return read_ahead(page, after, batch_size)

    async def latest(
        self,
        types: Collection[str],
        *,
        tenant: str | None = None,
        entity: str | None = None,
        entities: Collection[str] | None = None,
    ) -> dict[tuple[str, str], StoredEvent]:
        """The latest event of any of `types` per (tenant, entity), read through `entity_heads`."""
        if not types or (entities is not None and not entities):
            return {}
        out: dict[tuple[str, str], StoredEvent] = {}
        chunks: list[list[str] | None] = [None]
        if entities is not None:
            wanted = sorted(set(entities))
            chunks = [wanted[i : i + _CHUNK] for i in range(0, len(wanted), _CHUNK)]
        # The heads of one entity, or of a few named ones, of one tenant: a point read (see `__init__`).
        few = entity is not None or (entities is not None and len(chunks[0] or ()) <= _POINT_ENTITIES)
        fetch = self._fetch_point if tenant is not None and few else self._fetch
        for chunk in chunks:
            sql, params = latest_sql(types, tenant=tenant, entity=entity, entities=chunk)
            out.update(((e.tenant, e.entity), e) for e in _rows_to_events(await fetch(sql, params)))
        return out

    async def entities(
        self, types: Collection[str], *, tenant: str, newest_of: Collection[str] | None = None
    ) -> set[str]:
        """The tenant's entities that have an event of `types` (from `entity_heads`: no history scan).

        With `newest_of`, only those whose newest event of any of `newest_of` is of `types` (for example the
        entities whose latest outcome is a failure), still without reading an event; for a `newest_of` of
        `FLAG_GROUPS`, from `entity_flags`: it costs the entities flagged now, not all that were flagged once.
        """
        if not types:
            return set()
        sql, params = entities_sql(types, tenant=tenant, newest_of=newest_of)
        # The entities flagged now are a short range of `entity_flags`: a point read. A walk of heads is not.
        flagged = newest_of is not None and flag_group(list(types), newest_of) is not None
        rows = await (self._fetch_point if flagged else self._fetch)(sql, params)
        return {str(row[0]) for row in rows}

    async def order_commands_numbered(self, tenant: str, numbers: Collection[str]) -> list[StoredEvent]:
        """The newest order command of each order entity whose newest one carries one of `numbers`."""
        wanted = sorted(set(numbers))
        out: list[StoredEvent] = []
        for i in range(0, len(wanted), _CHUNK):
            sql, params = order_numbers_sql(tenant, wanted[i : i + _CHUNK])
            out.extend(_rows_to_events(await self._fetch(sql, params)))
        return sorted(out, key=lambda e: e.position)

    async def caused_by(self, positions: Collection[int]) -> list[StoredEvent]:
        """The events whose causation is one of `positions`, in position order."""
        out: list[StoredEvent] = []
        wanted = sorted(set(positions))
        for i in range(0, len(wanted), 500):  # SQLite caps the number of parameters per statement
            chunk = wanted[i : i + 500]
            sql = f"SELECT {_EVENT_COLUMNS} FROM events WHERE causation IN ({', '.join('?' * len(chunk))})"
            out.extend(_rows_to_events(await self._fetch(sql, chunk)))
        return sorted(out, key=lambda e: e.position)

    async def get(self, position: int) -> StoredEvent | None:
        rows = await self._fetch_point(f"SELECT {_EVENT_COLUMNS} FROM events WHERE position = ?", [position])
        return _row_to_event(rows[0]) if rows else None

    async def max_position(self) -> int:
        rows = await self._fetch_point("SELECT coalesce(max(position), 0) FROM events", [])
        return int(rows[0][0])

    async def cursor(self, poller: str, tenant: str) -> str | None:
        rows = await self._fetch_point("SELECT value FROM cursors WHERE poller = ? AND tenant = ?", [poller, tenant])
        return str(rows[0][0]) if rows else None

    async def checkpoint(self, stage: str, tenant: str) -> int:
        sql = "SELECT position FROM checkpoints WHERE stage = ? AND tenant = ?"
        rows = await self._fetch_point(sql, [stage, tenant])
        return int(rows[0][0]) if rows else 0

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run read-only SQL (the reader connection is `query_only`): for audit."""
        return [tuple(r) for r in await self._fetch(sql, params)]
