"""The event log: `open_log` picks the store from the configured database (a file path, or a postgresql:// URL)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import TypeAlias

    from pipeline.eventlog.postgres import PostgresEventLog
    from pipeline.eventlog.sqlite import OpenMode, SqliteEventLog

    # Either store, with what both give beyond `EventLog` (audit `query`, `rebuild_heads`, `async with`).
    AnyLog: TypeAlias = SqliteEventLog | PostgresEventLog

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(database: str | Path) -> bool:
    """Whether `database` names a PostgreSQL server rather than a SQLite file."""
    return isinstance(database, str) and database.startswith(POSTGRES_SCHEMES)


async def open_log(
    database: str | Path, *, clock: Callable[[], datetime] | None = None, mode: OpenMode = "create"
) -> SqliteEventLog | PostgresEventLog:
    """Open the event log `database` names: a `postgresql://…` URL opens the PostgreSQL log (asyncpg is imported
    only then), anything else is the SQLite file's path, opened in `mode` (see `SqliteEventLog.open`)."""
    if is_postgres(database):
        from pipeline.eventlog.postgres import PostgresEventLog

        return await (
            PostgresEventLog.open(str(database)) if clock is None else PostgresEventLog.open(str(database), clock=clock)
        )
    from pipeline.eventlog.sqlite import SqliteEventLog

    if clock is None:
        return await SqliteEventLog.open(database, mode=mode)
    return await SqliteEventLog.open(database, clock=clock, mode=mode)
