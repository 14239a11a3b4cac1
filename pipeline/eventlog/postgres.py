"""The event log in PostgreSQL (asyncpg): for a log that must outgrow one machine or be replicated by its operators.

Same contract as the SQLite log (`tests/eventlog_contract.py`), with the database doing the enforcing:
- Append-only: triggers refuse every UPDATE, DELETE and TRUNCATE on `events`, whoever connects.
- `append` is one transaction: the events, the cursor moves and the checkpoint moves land together or not at all.
- Positions are dense and gap-free in commit order as readers see them: every append first takes one
  transaction-level advisory lock (`pg_advisory_xact_lock`), then numbers its rows from `max(position) + 1`.
  Appends therefore commit one after another in position order, and the lock is released only after the commit
  is visible, so a reader that has seen position n never later meets a smaller position it skipped. A rolled
  back append leaves no hole (there is no sequence to burn).
- Duplicate dedupe keys are skipped (an existing key, or a repeat inside one append) and counted; the unique key
  with `ON CONFLICT DO NOTHING` stays as the database's own guard.
- `entity_heads` (the newest position per tenant, type and entity) is kept by a statement trigger in the append's
  own transaction, so `latest()` and `entities()` cost what they answer; `entity_flags` (the entities whose newest
  outcome, say, is a failure now) likewise.
- Schema versions live in `pipeline_schema`; `MIGRATIONS[i]` takes a database from version i to i + 1 under an
  advisory lock, so two processes opening a new database at once migrate it once. A newer schema is refused.
- `query()` (audit SQL) runs in a read-only transaction with a statement timeout.
- asyncpg is imported when a log is opened, so the SQLite log works without it; every asyncpg and connection
  error is translated into `StoreError` here.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio

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
from pipeline.eventlog.sqlite import HeadsRebuilt

Clock = Callable[[], datetime]

_V1 = """
CREATE TABLE events (
    position        bigint      PRIMARY KEY,
    recorded_at     timestamptz NOT NULL,
    tenant          text        NOT NULL,
    entity          text        NOT NULL,
    type            text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         json        NOT NULL,
    causation       bigint,
    mapping_version integer,
    dedupe_key      text        NOT NULL UNIQUE
);
CREATE INDEX events_by_entity ON events (tenant, entity, position);
CREATE INDEX events_by_type_time ON events (type, recorded_at);
CREATE INDEX events_by_time ON events (recorded_at);
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;
END $$;
CREATE TRIGGER events_no_update_delete BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();
CREATE TABLE cursors (
    poller     text        NOT NULL,
    tenant     text        NOT NULL,
    value      text        NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (poller, tenant)
);
CREATE TABLE checkpoints (
    stage      text        NOT NULL,
    tenant     text        NOT NULL,
    position   bigint      NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (stage, tenant)
);
"""

# v2: audit follows causation downwards; observations have none, so a partial index costs the pollers nothing.
_V2 = """
CREATE INDEX events_by_causation ON events (causation) WHERE causation IS NOT NULL;
"""

# v3: a cycle's reads cost what changed, not the history (as in the SQLite log). One statement trigger per append
# folds the inserted rows into `entity_heads`, in the append's transaction.
_V3 = """
CREATE TABLE entity_heads (
    tenant   text   NOT NULL,
    type     text   NOT NULL,
    entity   text   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tenant, type, entity)
);
INSERT INTO entity_heads (tenant, type, entity, position)
    SELECT tenant, type, entity, max(position) FROM events GROUP BY tenant, type, entity;
CREATE FUNCTION events_keep_heads() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO entity_heads (tenant, type, entity, position)
        SELECT tenant, type, entity, max(position) FROM inserted GROUP BY tenant, type, entity
    ON CONFLICT (tenant, type, entity) DO UPDATE SET position = excluded.position
        WHERE excluded.position > entity_heads.position;
    RETURN NULL;
END $$;
CREATE TRIGGER events_keep_heads AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION events_keep_heads();
CREATE INDEX events_by_tenant_type ON events (tenant, type, position);
"""

# v4: `entity_flags` (as in the SQLite log; the groups are `FLAG_GROUPS` in base.py): per (tenant, group, entity) a
# row while the entity's newest event of the group's types is a flag type, so "entities whose newest outcome is a
# failure" costs the entities failing now. One statement trigger per append folds the newest inserted member per
# (tenant, group, entity) into it, in the append's transaction. Also `events_by_order_number` (partial: order
# commands only), so the projector finds who holds an order number without loading every order.
_V4 = """
CREATE TABLE flag_groups (
    grp  text    NOT NULL,
    type text    NOT NULL,
    flag boolean NOT NULL,
    PRIMARY KEY (type, grp)
);
INSERT INTO flag_groups (grp, type, flag) VALUES
    ('marks', 'command.succeeded', false), ('marks', 'command.failed', true), ('marks', 'command.skipped', false),
    ('marks', 'entity.redriven', true),
    ('standing', 'command.succeeded', false), ('standing', 'command.failed', true),
    ('standing', 'entity.redriven', true),
    ('mapped', 'product.observed', false), ('mapped', 'invoice.observed', false), ('mapped', 'stock.observed', false),
    ('mapped', 'mapping.failed', true),
    ('read', 'product.observed', false), ('read', 'invoice.observed', false), ('read', 'stock.observed', false),
    ('read', 'observation.rejected', true);
CREATE TABLE entity_flags (
    tenant   text   NOT NULL,
    grp      text   NOT NULL,
    entity   text   NOT NULL,
    type     text   NOT NULL,
    position bigint NOT NULL,
    PRIMARY KEY (tenant, grp, entity)
);
INSERT INTO entity_flags (tenant, grp, entity, type, position)
    SELECT n.tenant, n.grp, n.entity, e.type, n.position
    FROM (SELECT h.tenant, g.grp, h.entity, max(h.position) AS position
          FROM entity_heads h JOIN flag_groups g ON g.type = h.type GROUP BY h.tenant, g.grp, h.entity) n
    JOIN events e ON e.position = n.position
    JOIN flag_groups f ON f.grp = n.grp AND f.type = e.type
    WHERE f.flag;
CREATE INDEX events_by_order_number ON events (tenant, (payload -> 'body' ->> 'orderNumber'))
    WHERE type = 'order.upsert_requested';
CREATE FUNCTION events_keep_flags() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH newest AS (
        SELECT DISTINCT ON (i.tenant, g.grp, i.entity) i.tenant, g.grp, i.entity, i.type, i.position, g.flag
        FROM inserted i JOIN flag_groups g ON g.type = i.type
        ORDER BY i.tenant, g.grp, i.entity, i.position DESC
    ), cleared AS (
        DELETE FROM entity_flags f USING newest n
        WHERE NOT n.flag AND f.tenant = n.tenant AND f.grp = n.grp AND f.entity = n.entity AND f.position < n.position
    )
    INSERT INTO entity_flags (tenant, grp, entity, type, position)
        SELECT tenant, grp, entity, type, position FROM newest WHERE flag
    ON CONFLICT (tenant, grp, entity) DO UPDATE SET type = excluded.type, position = excluded.position
        WHERE excluded.position > entity_flags.position;
    RETURN NULL;
END $$;
CREATE TRIGGER events_keep_flags AFTER INSERT ON events
    REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT EXECUTE FUNCTION events_keep_flags();
"""

# `entity_flags` as derived from `entity_heads` (so from `events`), as the migration builds it.
# MIGRATIONS[i] brings a database from version i to i + 1. Append new entries; never edit old ones.
MIGRATIONS: tuple[str, ...] = (_V1, _V2, _V3, _V4)
SCHEMA_VERSION = len(MIGRATIONS)


def _lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# Every append takes this lock first (see the module's docstring); migrations take the other.
APPEND_LOCK = _lock_key("pipeline.eventlog.append")
MIGRATE_LOCK = _lock_key("pipeline.eventlog.migrate")

# Audit SQL may run this long before the server cancels it.
QUERY_TIMEOUT_MS = 30_000

_INSERT = """
WITH given AS (
    SELECT * FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::bigint[], $8::int[],
                         $9::text[])
        WITH ORDINALITY AS g(tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key,
                             ord)
), fresh AS (
    SELECT DISTINCT ON (g.dedupe_key) g.* FROM given g
    WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.dedupe_key = g.dedupe_key)
    ORDER BY g.dedupe_key, g.ord
), stored AS (
    INSERT INTO events (position, recorded_at, tenant, entity, type, schema_version, payload, causation,
                        mapping_version, dedupe_key)
    SELECT (SELECT coalesce(max(position), 0) FROM events) + row_number() OVER (ORDER BY ord), $1, tenant, entity,
           type, schema_version, payload::json, causation, mapping_version, dedupe_key
    FROM fresh ORDER BY ord
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING 1
)
SELECT count(*) FROM stored
"""
_CURSORS = """
INSERT INTO cursors (poller, tenant, value, updated_at) SELECT *, $4 FROM unnest($1::text[], $2::text[], $3::text[])
ON CONFLICT (poller, tenant) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at
"""
_CHECKPOINTS = """
INSERT INTO checkpoints (stage, tenant, position, updated_at)
SELECT *, $4 FROM unnest($1::text[], $2::text[], $3::bigint[])
ON CONFLICT (stage, tenant) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at
"""
COLUMNS = "position, recorded_at, tenant, entity, type, schema_version, payload, causation, mapping_version, dedupe_key"


# `order_commands_numbered`: a range of the partial index `events_by_order_number`, each hit kept if it is its
# entity's head.
ORDER_NUMBERS_SQL = (
    f"SELECT {COLUMNS} FROM events e WHERE e.type = 'order.upsert_requested' AND e.tenant = $1"
    " AND (e.payload -> 'body' ->> 'orderNumber') = ANY($2::text[])"
    " AND e.position = (SELECT h.position FROM entity_heads h WHERE h.tenant = e.tenant"
    " AND h.type = 'order.upsert_requested' AND h.entity = e.entity) ORDER BY e.position"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _asyncpg() -> Any:
    """The asyncpg module, imported on first use: the SQLite log must work where it is not installed."""
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise StoreError("a postgresql:// database needs the asyncpg package: pip install asyncpg") from exc
    return asyncpg


def _is_store_error(exc: BaseException) -> bool:
    pg = _asyncpg()
    return isinstance(exc, pg.PostgresError | pg.InterfaceError | OSError | TimeoutError)


def redact(dsn: str) -> str:
    """The DSN without its password, for messages."""
    head, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return dsn
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{head}://{user}@{host}" if user else f"{head}://{host}"


class _Params:
    """Numbered query parameters ($1, $2, …) collected as a query is built."""

    def __init__(self) -> None:
        self.values: list[Any] = []

    def __call__(self, value: Any) -> str:
        self.values.append(value)
        return f"${len(self.values)}"


def read_sql(
    *,
    after: int = 0,
    upto: int | None = None,
    tenant: str | None = None,
    entity: str | None = None,
    types: Collection[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 1000,
) -> tuple[str, list[Any]]:
    """One keyset page of `read`: `position > after … ORDER BY position LIMIT n`."""
    p = _Params()
    where = [f"position > {p(after)}"]
    if upto is not None:
        where.append(f"position <= {p(upto)}")
    if tenant is not None:
        where.append(f"tenant = {p(tenant)}")
    if entity is not None:
        where.append(f"entity = {p(entity)}")
    if types is not None:
        where.append(f"type = ANY({p(list(types))}::text[])")
    if since is not None:
        where.append(f"recorded_at >= {p(since)}")
    if until is not None:
        where.append(f"recorded_at < {p(until)}")
    return f"SELECT {COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY position LIMIT {p(limit)}", p.values


class PostgresEventLog:
    """`EventLog` on PostgreSQL. Open with `await PostgresEventLog.open(dsn)`; close with `await log.close()`."""

    def __init__(self, dsn: str, pool: Any, clock: Clock) -> None:
        self.dsn = dsn
        self.path = redact(dsn)  # named in messages, like the SQLite log's file
        self._pool = pool
        self._clock = clock
        self._write_lock = anyio.Lock()

    @classmethod
    async def open(
        cls, dsn: str, *, clock: Clock = utc_now, schema: str | None = None, pool_size: int = 4
    ) -> PostgresEventLog:
        """Connect (creating and migrating the schema as needed).

        `schema` puts the log's tables in that PostgreSQL schema (created if missing) instead of the role's
        default. Raises SchemaVersionError for a newer database, StoreError when the server cannot be used.
        """
        pg = _asyncpg()
        settings = {"search_path": schema} if schema else None
        pool: Any = None
        try:
            if schema:
                conn = await pg.connect(dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                finally:
                    await conn.close()
            pool = await pg.create_pool(dsn, min_size=1, max_size=pool_size, server_settings=settings)
            async with pool.acquire() as conn:
                await _migrate(conn, redact(dsn))
        except BaseException as exc:
            if pool is not None:
                await pool.close()
            if isinstance(exc, Exception) and _is_store_error(exc):
                raise StoreError(f"cannot open event log {redact(dsn)}: {exc}") from exc
            raise
        return cls(dsn, pool, clock)

    async def close(self) -> None:
        await self._pool.close()

    async def __aenter__(self) -> PostgresEventLog:
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
        recorded = self._clock()
        if recorded.tzinfo is None:
            raise ValueError("naive datetime: the log records UTC times only")
        cols = encode_columns(events)  # before the transaction: a CodecError writes nothing
        try:
            # One writer per process at a time (appends queue here rather than each holding a pooled connection
            # while it waits for the advisory lock, which readers need); the advisory lock orders the processes.
            async with self._write_lock, self._pool.acquire() as conn, conn.transaction():
                appended = 0
                if events:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                    appended = int(await conn.fetchval(_INSERT, recorded, *cols))
                if cursors:
                    (pollers, tenants), values = zip(*cursors, strict=True), list(cursors.values())
                    await conn.execute(_CURSORS, list(pollers), list(tenants), values, recorded)
                if checkpoints:
                    (stages, tenants), positions = zip(*checkpoints, strict=True), list(checkpoints.values())
                    await conn.execute(_CHECKPOINTS, list(stages), list(tenants), positions, recorded)
        except Exception as exc:
            if _is_store_error(exc):
                raise StoreError(f"append to {self.path} failed: {exc}") from exc
            raise
        return AppendResult(appended, len(events) - appended)

    async def write_raw(self, sql: str, params: Sequence[Any]) -> None:
        """Run one writing statement under the append lock, in its own transaction (for `migrate-log`, which
        copies events with the positions they already have)."""
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                await conn.execute(sql, *params)
        except Exception as exc:
            if _is_store_error(exc):
                raise StoreError(f"write to {self.path} failed: {exc}") from exc
            raise

    async def rebuild_heads(self) -> HeadsRebuilt:
        """Rebuild `entity_heads` (and `entity_flags` from it) from `events` in one transaction; say how many rows
        were wrong or missing."""
        wrong, counts = 0, []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", APPEND_LOCK)
                for derived in DERIVED_TABLES:
                    count_wrong, empty, fill, count = derived.rebuild()
                    wrong += await conn.fetchval(count_wrong)
                    await conn.execute(empty)
                    await conn.execute(fill)
                    counts.append(await conn.fetchval(count))
        except Exception as exc:
            if _is_store_error(exc):
                raise StoreError(f"rebuilding entity_heads in {self.path} failed: {exc}") from exc
            raise
        heads, flags = counts
        return HeadsRebuilt(int(heads), int(wrong), int(flags))

    # ------------------------------------------------------------------------------------------------ reading

    async def _fetch(self, sql: str, params: Sequence[Any]) -> list[Any]:
        try:
            return list(await self._pool.fetch(sql, *params))
        except Exception as exc:
            if _is_store_error(exc):
                raise StoreError(f"read from {self.path} failed: {exc}") from exc
            raise

    async def _fetch_events(self, sql: str, params: Sequence[Any]) -> list[StoredEvent]:
        return decode_rows(await self._fetch(sql, params))

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

        def page(start: int) -> asyncio.Future[list[StoredEvent]]:
            sql, params = read_sql(
                after=start,
                upto=upto,
                tenant=tenant,
                entity=entity,
                types=types,
                since=since,
                until=until,
                limit=batch_size,
            )
            return asyncio.ensure_future(self._fetch_events(sql, params))

        # The next page is fetched (on another pooled connection) while this one is handed out here.
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
        p = _Params()
        where = [f"type = ANY({p(list(types))}::text[])"]
        if tenant is not None:
            where.append(f"tenant = {p(tenant)}")
        if entity is not None:
            where.append(f"entity = {p(entity)}")
        if entities is not None:
            where.append(f"entity = ANY({p(sorted(set(entities)))}::text[])")
        sql = (
            f"SELECT {COLUMNS} FROM events WHERE position IN ("
            f"SELECT max(position) FROM entity_heads WHERE {' AND '.join(where)} GROUP BY tenant, entity)"
        )
        return {(e.tenant, e.entity): e for e in decode_rows(await self._fetch(sql, p.values))}

    async def entities(
        self, types: Collection[str], *, tenant: str, newest_of: Collection[str] | None = None
    ) -> set[str]:
        """The tenant's entities that have an event of `types` (from `entity_heads`: no history scan); for a
        `newest_of` of `FLAG_GROUPS`, the entities flagged now (from `entity_flags`)."""
        if not types:
            return set()
        p = _Params()
        group = flag_group(types, newest_of) if newest_of is not None else None
        if group is not None:
            sql = (
                f"SELECT entity FROM entity_flags WHERE tenant = {p(tenant)} AND grp = {p(group)}"
                f" AND type = ANY({p(list(types))})"
            )
            return {str(row[0]) for row in await self._fetch(sql, p.values)}
        sql = f"SELECT DISTINCT entity FROM entity_heads h WHERE tenant = {p(tenant)} AND type = ANY({p(list(types))})"
        if newest_of is not None:
            sql += (
                " AND position = (SELECT max(position) FROM entity_heads WHERE tenant = h.tenant"
                f" AND type = ANY({p(list(newest_of))}) AND entity = h.entity)"
            )
        return {str(row[0]) for row in await self._fetch(sql, p.values)}

    async def order_commands_numbered(self, tenant: str, numbers: Collection[str]) -> list[StoredEvent]:
        """The newest order command of each order entity whose newest one carries one of `numbers`."""
        if not numbers:
            return []
        return decode_rows(await self._fetch(ORDER_NUMBERS_SQL, [tenant, sorted(set(numbers))]))

    async def caused_by(self, positions: Collection[int]) -> list[StoredEvent]:
        if not positions:
            return []
        sql = f"SELECT {COLUMNS} FROM events WHERE causation = ANY($1::bigint[]) ORDER BY position"
        return decode_rows(await self._fetch(sql, [sorted(set(positions))]))

    async def get(self, position: int) -> StoredEvent | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM events WHERE position = $1", [position])
        return decode_rows(rows)[0] if rows else None

    async def max_position(self) -> int:
        rows = await self._fetch("SELECT coalesce(max(position), 0) FROM events", [])
        return int(rows[0][0])

    async def cursor(self, poller: str, tenant: str) -> str | None:
        rows = await self._fetch("SELECT value FROM cursors WHERE poller = $1 AND tenant = $2", [poller, tenant])
        return str(rows[0][0]) if rows else None

    async def checkpoint(self, stage: str, tenant: str) -> int:
        rows = await self._fetch("SELECT position FROM checkpoints WHERE stage = $1 AND tenant = $2", [stage, tenant])
        return int(rows[0][0]) if rows else 0

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run SQL for audit in a read-only transaction that the server cancels after `QUERY_TIMEOUT_MS`.

        With `params`, SQL written for either store works: SQLite's `?` placeholders (outside quotes) become `$1`,
        `$2`, … (`numbered`). Without them the text is run as it is (an operator's `audit sql` may use `?`, a
        json operator here)."""
        if params:
            sql = numbered(sql)
        try:
            async with self._pool.acquire() as conn, conn.transaction(readonly=True):
                await conn.execute(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT_MS)}")
                return [tuple(r) for r in await conn.fetch(sql, *params)]
        except Exception as exc:
            if _is_store_error(exc):
                raise StoreError(f"query on {self.path} failed: {exc}") from exc
            raise


def numbered(sql: str) -> str:
    """`sql` with each `?` placeholder outside quoted text ('…', "…") numbered as PostgreSQL's `$1`, `$2`, …;
    SQL already numbered (`$1`) is returned as it is."""
    if "?" not in sql or "$1" in sql:
        return sql
    out: list[str] = []
    quote: str | None = None
    n = 0
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            n += 1
            out.append(f"${n}")
            continue
        out.append(ch)
    return "".join(out)


async def _migrate(conn: Any, where: str) -> None:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS pipeline_schema (version integer NOT NULL)")
        version = await conn.fetchval("SELECT version FROM pipeline_schema")
        if version is None:
            version = 0
            await conn.execute("INSERT INTO pipeline_schema (version) VALUES (0)")
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{where} has schema version {version}; this pipeline understands up to {SCHEMA_VERSION}."
                " Upgrade pipeline to open it."
            )
        for target in range(version, SCHEMA_VERSION):
            await conn.execute(MIGRATIONS[target])
            await conn.execute("UPDATE pipeline_schema SET version = $1", target + 1)
