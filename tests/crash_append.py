"""Child process for the crash test: appends batches with a cursor move until it is killed.

Each batch holds BATCH events tagged with its number, and moves the cursor to that number in the same append.
It resumes from the cursor, prints each committed batch number, and never stops by itself.
"""

from __future__ import annotations

import sys

import anyio

from pipeline.eventlog import open_log
from pipeline.eventlog.base import NewEvent
from pipeline.events import ProductObserved

BATCH = 300


async def main(path: str) -> None:
    log = await open_log(path)  # a SQLite file, or a postgresql:// URL
    start = int(await log.cursor("crash", "t") or 0) + 1
    print("ready", flush=True)
    batch = start
    while True:
        events = [
            NewEvent(
                "t",
                f"product:{i}",
                ProductObserved({"Id": i, "batch": batch, "pad": "x" * 400}),
                f"{batch}/{i}",
            )
            for i in range(BATCH)
        ]
        await log.append(events, cursors={("crash", "t"): str(batch)})
        print(batch, flush=True)
        batch += 1


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
