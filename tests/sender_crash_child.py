"""Child process for the sender crash test: one sender run for tenant "acme" (goods owner 159), then exit.

Usage: python tests/sender_crash_child.py <database> <ongoing base url> [stuck]
Prints the run's counts on success. The test kills it with SIGKILL while the fake parks an answer. With `stuck`,
appends of outcomes never finish (a disk that stopped answering), so the outcomes wait at the recorder unrecorded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import aiohttp
import anyio

from pipeline.clients.ongoing import OngoingClient
from pipeline.config import OngoingSettings, Secret, TenantSettings
from pipeline.eventlog.base import AppendResult, NewEvent
from pipeline.eventlog.sqlite import SqliteEventLog
from pipeline.events import OUTCOME_TYPES
from pipeline.senders import Sender

GOODS_OWNER = 159


class StuckOutcomes(SqliteEventLog):
    """A log whose appends of outcomes never finish; everything else works."""

    async def append(self, events: Sequence[NewEvent], **moves: Any) -> AppendResult:
        if any(e.event.TYPE in OUTCOME_TYPES for e in events):
            await anyio.Event().wait()
        return await super().append(events, **moves)


async def main(database: str, url: str, mode: str = "") -> None:
    log = await (StuckOutcomes if mode == "stuck" else SqliteEventLog).open(database)
    try:
        async with aiohttp.ClientSession() as http:
            settings = OngoingSettings(api_url=url, username="wms", password=Secret("pw"), timeout_seconds=30)
            tenant = TenantSettings(
                name="acme", poweroffice_client_key=Secret("ck"), ongoing_goods_owner_id=GOODS_OWNER
            )
            summary = await Sender(log, [tenant], ongoing=OngoingClient(http, settings)).run_once()
            total = summary.total
            print(f"delivered={total.delivered} skipped={total.skipped} failed={total.failed} waiting={total.waiting}")
    finally:
        await log.close()


if __name__ == "__main__":
    anyio.run(main, *sys.argv[1:])
