"""The event log in one SQLite file (WAL mode): one writer connection, one reader connection beside it.

- Append-only is enforced by the database: triggers abort every UPDATE and DELETE on `events`.
- `append` runs one `BEGIN IMMEDIATE … COMMIT` holding one `executemany` for the events plus the cursor and
  checkpoint upserts, so a crash leaves all of it or none of it.
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
import contextlib
import functools
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import anyio
import orjson

from pipeline.errors import CodecError, SchemaVersionError, StoreError
from pipeline.eventlog.base import AppendResult, CheckpointMoves, CursorMoves, NewEvent, StoredEvent
from pipeline.events import ROW_META, decode_dict, encode

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

# MIGRATIONS[i] brings a database from user_version i to i + 1. Append new entries; never edit old ones.
MIGRATIONS: tuple[str, ...] = (_V1, _V2)
SCHEMA_VERSION = len(MIGRATIONS)

_INSERT = (
    "INSERT INTO events (recorded_at, tenant, entity, type, schema_version, payload, causation,"
    " mapping_version, dedupe_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (dedupe_key) DO NOTHING"
)
_COLUMNS = (
    "position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key"
)


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


def _row_to_event(row: sqlite3.Row | tuple[Any, ...]) -> StoredEvent:
    position, recorded, tenant, entity, type_, version, payload, causation, mapping_version, dedupe = row
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"event {position}: payload is not JSON: {exc}") from exc
    return StoredEvent(
        position,
        parse_time(recorded),
        tenant,
        entity,
        type_,
        version,
        decode_dict(type_, version, data),
        causation,
        mapping_version,
        dedupe,
    )


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


class SqliteEventLog:
    """`EventLog` on SQLite. Open with `await SqliteEventLog.open(path)`; close with `await log.close()`."""

    def __init__(self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection, clock: Clock) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._clock = clock
        self._write_lock = anyio.Lock()

    @classmethod
    async def open(cls, path: str | Path, *, clock: Clock = utc_now, mode: OpenMode = "create") -> SqliteEventLog:
        """Open the log; `mode` says whether a missing file may be created and an older one upgraded (see the
        module notes). Raises SchemaVersionError for a schema this mode can't use, StoreError else."""
        p = Path(path)
        if mode != "create" and not await anyio.Path(p).is_file():
            raise StoreError(f"no event log at {p}; run sync first")
        writer: aiosqlite.Connection | None = None
        try:
            if mode == "create":
                p.parent.mkdir(parents=True, exist_ok=True)
            writer = await aiosqlite.connect(p, isolation_level=None, timeout=30)
            await writer.execute("PRAGMA journal_mode = WAL")
            await writer.execute("PRAGMA synchronous = NORMAL")
            await writer.execute("PRAGMA busy_timeout = 30000")
            await _on_thread(writer, _migrate, str(p), mode)
            reader = await aiosqlite.connect(p, isolation_level=None, timeout=30)
            await reader.execute("PRAGMA busy_timeout = 30000")
            await reader.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            if writer is not None:
                await writer.close()
            raise StoreError(f"cannot open event log {p}: {exc}") from exc
        except BaseException:
            if writer is not None:
                await writer.close()
            raise
        return cls(p, writer, reader, clock)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    async def __aenter__(self) -> SqliteEventLog:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------------------------------------ writing

    def _rows(self, events: Sequence[NewEvent], recorded: str) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        dumps = orjson.dumps
        meta = ROW_META
        for tenant, entity, ev, dedupe_key, causation, mapping_version in events:
            type_, version, from_json, fields = meta[ev.__class__]
            try:
                # Observations (parsed JSON) take orjson's C path directly; others go through the checking codec.
                payload = (dumps(fields(ev)) if from_json else encode(ev)).decode()
            except (TypeError, CodecError) as exc:
                raise CodecError(f"cannot encode {type_} for {tenant}/{entity}: {exc}") from exc
            append((recorded, tenant, entity, type_, version, payload, causation, mapping_version, dedupe_key))
        return rows

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
        rows = self._rows(events, recorded)  # encode before taking the lock: a CodecError writes nothing
        cursor_rows = [(poller, tenant, value, recorded) for (poller, tenant), value in (cursors or {}).items()]
        checkpoint_rows = [(stage, tenant, pos, recorded) for (stage, tenant), pos in (checkpoints or {}).items()]
        async with self._write_lock:
            try:
                result: AppendResult = await _on_thread(
                    self._writer, self._append_tx, rows, cursor_rows, checkpoint_rows
                )
                return result
            except sqlite3.Error as exc:
                raise StoreError(f"append to {self.path} failed: {exc}") from exc

    def _append_tx(
        self,
        conn: sqlite3.Connection,
        rows: list[tuple[Any, ...]],
        cursor_rows: list[tuple[Any, ...]],
        checkpoint_rows: list[tuple[Any, ...]],
    ) -> AppendResult:
        # Runs on the writer's thread: one transaction, no await between its statements.
        conn.execute("BEGIN IMMEDIATE")
        try:
            appended = conn.executemany(_INSERT, rows).rowcount if rows else 0
            if cursor_rows:
                conn.executemany(
                    "INSERT INTO cursors (poller, tenant, value, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (poller, tenant) DO UPDATE SET value = excluded.value,"
                    " updated_at = excluded.updated_at",
                    cursor_rows,
                )
            if checkpoint_rows:
                conn.executemany(
                    "INSERT INTO checkpoints (stage, tenant, position, updated_at) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (stage, tenant) DO UPDATE SET position = excluded.position,"
                    " updated_at = excluded.updated_at",
                    checkpoint_rows,
                )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return AppendResult(appended, len(rows) - appended)

    # ------------------------------------------------------------------------------------------------ reading

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._reader.execute_fetchall(sql, params))
        except sqlite3.Error as exc:
            raise StoreError(f"read from {self.path} failed: {exc}") from exc

    async def read(
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
        if types is not None and not types:
            return
        where, params = _filters(
            tenant=tenant,
            entity=entity,
            types=types,
            since=format_time(since) if since else None,
            until=format_time(until) if until else None,
        )
        where.insert(0, "position > ?")
        if upto is not None:
            where.append("position <= ?")
            params.append(upto)
        sql = f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT ?"
        # The next page is fetched on the reader's thread while this one is decoded here.
        pending = asyncio.ensure_future(self._fetch(sql, [after, *params, batch_size]))
        try:
            while True:
                rows = await pending
                if len(rows) == batch_size:
                    pending = asyncio.ensure_future(self._fetch(sql, [rows[-1][0], *params, batch_size]))
                for row in rows:
                    yield _row_to_event(row)
                if len(rows) < batch_size:
                    return
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def latest(
        self, types: Collection[str], *, tenant: str | None = None, entity: str | None = None
    ) -> dict[tuple[str, str], StoredEvent]:
        """The latest event of any of `types` per (tenant, entity)."""
        if not types:
            return {}
        where, params = _filters(tenant=tenant, entity=entity, types=types)
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE position IN ("
            f"SELECT max(position) FROM events WHERE {' AND '.join(where)} GROUP BY tenant, entity)"
        )
        return {(e.tenant, e.entity): e for e in map(_row_to_event, await self._fetch(sql, params))}

    async def caused_by(self, positions: Collection[int]) -> list[StoredEvent]:
        """The events whose causation is one of `positions`, in position order."""
        out: list[StoredEvent] = []
        wanted = sorted(set(positions))
        for i in range(0, len(wanted), 500):  # SQLite caps the number of parameters per statement
            chunk = wanted[i : i + 500]
            sql = f"SELECT {_COLUMNS} FROM events WHERE causation IN ({', '.join('?' * len(chunk))})"
            out.extend(map(_row_to_event, await self._fetch(sql, chunk)))
        return sorted(out, key=lambda e: e.position)

    async def get(self, position: int) -> StoredEvent | None:
        rows = await self._fetch(f"SELECT {_COLUMNS} FROM events WHERE position = ?", [position])
        return _row_to_event(rows[0]) if rows else None

    async def max_position(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(position), 0) FROM events", [])
        return int(rows[0][0])

    async def cursor(self, poller: str, tenant: str) -> str | None:
        rows = await self._fetch("SELECT value FROM cursors WHERE poller = ? AND tenant = ?", [poller, tenant])
        return str(rows[0][0]) if rows else None

    async def checkpoint(self, stage: str, tenant: str) -> int:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE stage = ? AND tenant = ?", [stage, tenant])
        return int(rows[0][0]) if rows else 0

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run read-only SQL (the reader connection is `query_only`): for audit."""
        return [tuple(r) for r in await self._fetch(sql, params)]
