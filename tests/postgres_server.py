"""Whether the PostgreSQL tests can run: `PIPELINE_TEST_POSTGRES` names a server that answers.

`python -m tests.postgres_server` prints one plain line saying so (`scripts/test` shows it before the tests).
"""

from __future__ import annotations

import asyncio
import functools
import os

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


if __name__ == "__main__":
    reason = unavailable()
    if reason is None:
        from pipeline.eventlog.postgres import redact

        print(f"PostgreSQL tests: RUNNING against {redact(os.environ[ENV])}")
    else:
        print(reason.replace("PostgreSQL tests skipped:", "PostgreSQL tests: SKIPPED,"))
