"""Keyset paging with read-ahead, shared by both stores: the next page is fetched while this one is decoded."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

from pipeline.eventlog.base import StoredEvent


async def read_ahead(
    page: Callable[[int], asyncio.Future[list[Any]]],
    after: int,
    batch_size: int,
    decode: Callable[[Sequence[Any]], Iterable[StoredEvent]],
) -> AsyncIterator[StoredEvent]:
    """Yield the events of pages `page(after)`, `page(last position of that page)`, … until a short page.

    `page(start)` starts fetching the rows after `start` (position first in each row) and returns their future;
    the following page is requested before this one is decoded. A page still in flight when the caller stops
    is cancelled and awaited, so no fetch outlives the read."""
    pending = page(after)
    try:
        while True:
            rows = await pending
            if len(rows) == batch_size:
                pending = page(rows[-1][0])
            for stored in decode(rows):
                yield stored
            if len(rows) < batch_size:
                return
    finally:
        if not pending.done():
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
