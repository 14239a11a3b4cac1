"""Whether the PostgreSQL tests can run: `PIPELINE_TEST_POSTGRES` names a server that answers.

`python -m tests.postgres_server` prints one plain line saying so (`scripts/test` shows it before the tests).
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import uuid
from collections.abc import Callable

import anyio

ENV = "PIPELINE_TEST_POSTGRES"


@functools.cache
def unavailable() -> str | None:
    """None when the server answers; else why the PostgreSQL tests skip."""
    dsn = os.environ.get(ENV, "")
    if not dsn:
        return f"PostgreSQL tests skipped: {ENV} is not set (no server to run them against)"
    try:
        import asyncpg
    except ImportError:
        return "PostgreSQL tests skipped: asyncpg is not installed"

    async def ping() -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        await conn.close()

    try:
        asyncio.run(ping())
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        from pipeline.eventlog.postgres import redact

        return f"PostgreSQL tests skipped: {ENV} is set but {redact(dsn)} does not answer ({type(exc).__name__})"
    return None


def schema_dsn(schema: str) -> str:
    """The test server's DSN with `schema` as the search path (asyncpg passes the parameter as a server setting)."""
    dsn = os.environ[ENV]
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


def new_schema(prefix: str) -> str:
    """A fresh schema name starting with `prefix` (a test module's own, so its clean-up drops only its schemas)."""
    return prefix + uuid.uuid4().hex[:12]


def drop_schemas(prefix: str) -> None:
    """Drop every schema whose name starts with `prefix` (a module's clean-up, before and after it runs)."""
    if unavailable() is not None:
        return

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(os.environ[ENV])
        try:
            for (name,) in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", prefix + "%"):
                await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
        finally:
            await conn.close()

    asyncio.run(drop())


async def eventually(condition: Callable[[], object], timeout: float, what: str) -> float:
    """Wait until `condition()` holds (an awaitable it returns is awaited), checking every 10 ms; return how long it
    took. Fails after `timeout`. For the workers' tests, whose conditions are other processes', the database's and
    the fakes' state, which signal no event to wait on."""
    began = anyio.current_time()
    with anyio.move_on_after(timeout):
        while True:
            held = condition()
            if inspect.isawaitable(held):
                held = await held
            if held:
                return anyio.current_time() - began
            await anyio.sleep(0.01)
    raise AssertionError(f"not within {timeout} s: {what}")


if __name__ == "__main__":
    reason = unavailable()
    if reason is None:
        from pipeline.eventlog.postgres import redact

        print(f"PostgreSQL tests: RUNNING against {redact(os.environ[ENV])}")
    else:
        print(reason.replace("PostgreSQL tests skipped:", "PostgreSQL tests: SKIPPED,"))
