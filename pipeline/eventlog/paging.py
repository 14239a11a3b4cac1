"""Keyset paging with read-ahead, shared by both stores: the next page is fetched while this one is consumed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from pipeline.eventlog.base import StoredEvent


async def read_ahead(
    page: Callable[[int], asyncio.Future[list[StoredEvent]]], after: int, batch_size: int
) -> AsyncIterator[StoredEvent]:
    """Yield the events of pages `page(after)`, `page(last position of that page)`, … until a short page.

    `page(start)` starts fetching and decoding the events after `start` and returns their future; the following
    page is requested before this one is yielded. A page still in flight when the caller stops is cancelled and
    awaited, so no fetch outlives the read."""
    pending = page(after)
    try:
        while True:
            events = await pending
            if len(events) == batch_size:
                pending = page(events[-1].position)
            for stored in events:
                yield stored
            if len(events) < batch_size:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending


async def nothing() -> AsyncIterator[StoredEvent]:
    """An empty read."""
    return
    yield  # pragma: no cover - makes this an async generator
