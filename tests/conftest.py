"""Shared fixtures: asyncio only (aiohttp and aiosqlite need it), retries without waits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import stamina

DATA = Path(__file__).parent / "data"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_retry_waits() -> Iterator[None]:
    """Retries keep their attempt counts but do not sleep between attempts."""
    with stamina.set_testing(True, attempts=6, cap=True):
        yield
