"""Recording a sender run's outcomes off the lanes' critical path.

A lane hands each outcome to the run's `Recorder` and starts its next delivery at once; the recorder appends what
the lanes handed it in batches, one `append` for the outcomes of every lane that has some waiting, each lane's
checkpoint moving in the same transaction. Its rules:

- **Order.** Outcomes are appended in the order they were handed over, one batch after the other: a lane's
  outcomes, and its checkpoint moves, reach the log in the order the lane produced them.
- **Checkpoint.** A lane's checkpoint is computed when its outcomes are appended, from its `Watermark` with only the
  recorded outcomes closed: it never passes a command whose outcome is not in the log.
- **Bounded loss.** A lane starts a delivery only while at most `limit` of its outcomes wait (`room`), so a crash
  loses the answers of at most `2 × limit` commands per lane (those in flight and those waiting), each sent again,
  once, by the next run. Upserts make that harmless and the order stage looks up before it writes.
- **Dependencies.** `settled(entities)` waits until every outcome handed for those entities is recorded: an order
  starts only once its articles' deliveries are in the log.
- **A failed append** is retried lane by lane when the batch held several lanes, so only the lane whose outcomes
  cannot be appended fails: its `room`, `settled` and `flush` raise the error from then on (the lane starts nothing
  more and fails), its later outcomes are dropped, and its checkpoint stays where the log has it.

`flush()` waits until everything the lane handed over is recorded (or raises its error); a lane calls it before
it ends, so a run returns only once its outcomes are in the log.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass

import anyio

from pipeline.eventlog.base import EventLog, NewEvent

logger = logging.getLogger(__name__)


class Watermark:
    """The checkpoint a lane may store: just below its oldest command still open in this run, else `head`.

    Positions are only ever closed, so the value never goes down.
    """

    def __init__(self, head: int) -> None:
        self.head = head
        self._open: list[int] = []
        self._closed: set[int] = set()

    def open(self, position: int) -> None:
        heapq.heappush(self._open, position)

    def close(self, position: int) -> None:
        self._closed.add(position)

    @property
    def value(self) -> int:
        while self._open and self._open[0] in self._closed:
            self._closed.discard(heapq.heappop(self._open))
        return self._open[0] - 1 if self._open else self.head


@dataclass(slots=True)
class _Entry:
    track: Track
    event: NewEvent
    position: int  # the command's position
    terminal: bool  # whether the outcome closes the command (a transient failure does not)


class Track:
    """One lane's outcomes at the recorder. Made by `Recorder.track`."""

    def __init__(
        self, recorder: Recorder, key: tuple[str, str], checkpoint: int, watermark: Watermark, limit: int
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._recorder = recorder
        self.key = key  # (stage, tenant): the checkpoint this lane moves
        self.checkpoint = checkpoint  # as the log has it
        self.watermark = watermark
        self.limit = limit
        self.waiting = 0  # outcomes handed over, not yet recorded
        self.recorded = 0
        self.error: Exception | None = None
        self._entities: Counter[str] = Counter()  # entity -> its outcomes that wait

    def hand(self, event: NewEvent, position: int, *, terminal: bool) -> None:
        """Queue one outcome (of the command at `position`) for recording; returns at once."""
        if self.error is not None:
            return  # the lane is failing: nothing more of it is recorded
        self.waiting += 1
        self._entities[event.entity] += 1
        self._recorder._queue(_Entry(self, event, position, terminal))

    def waits_for(self, entities: Collection[str]) -> bool:
        """Whether an outcome of any of `entities` is handed over but not recorded yet."""
        return any(e in self._entities for e in entities)

    async def room(self) -> None:
        """Return once at most `limit` outcomes of this lane wait; raise the recording's error if it failed."""
        await self._until(lambda: self.waiting <= self.limit)

    async def settled(self, entities: Collection[str]) -> None:
        """Return once every outcome handed over for `entities` is recorded."""
        await self._until(lambda: not self.waits_for(entities))

    async def flush(self) -> None:
        """Return once every outcome handed over is recorded."""
        await self._until(lambda: self.waiting == 0)

    async def _until(self, done: Callable[[], bool]) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if done():
                return
            await self._recorder._progress.wait()

    def _recorded(self, entries: list[_Entry], checkpoint: int) -> None:
        self.checkpoint = checkpoint
        self.recorded += len(entries)
        self._settle(entries)

    def _failed(self, entries: list[_Entry], error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._settle(entries)

    def _settle(self, entries: list[_Entry]) -> None:
        self.waiting -= len(entries)
        for entry in entries:
            self._entities[entry.event.entity] -= 1
            if not self._entities[entry.event.entity]:
                del self._entities[entry.event.entity]


class Recorder:
    """Appends the outcomes its tracks hand over, in batches. Run `run()` in a task; `close()` ends it once all
    that was handed over is written."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.batches = 0  # appends made (for tests and figures)
        self._pending: list[_Entry] = []
        self._wake = anyio.Event()
        self._progress = anyio.Event()
        self._closed = False

    def track(self, key: tuple[str, str], checkpoint: int, watermark: Watermark, *, limit: int) -> Track:
        return Track(self, key, checkpoint, watermark, limit)

    def close(self) -> None:
        """No more outcomes will come: `run` returns after writing what is pending."""
        self._closed = True
        self._wake.set()

    def _queue(self, entry: _Entry) -> None:
        if self._closed:
            raise RuntimeError("the recorder is closed")
        self._pending.append(entry)
        self._wake.set()

    async def run(self) -> None:
        while True:
            if not self._pending:
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = anyio.Event()
                continue
            batch, self._pending = self._pending, []
            try:
                await self._write(batch)
            finally:
                # Wake whoever waits on a track (also when cancelled: they see the state as it is).
                self._progress.set()
                self._progress = anyio.Event()

    async def _write(self, batch: list[_Entry]) -> None:
        parts: dict[Track, list[_Entry]] = {}
        for entry in batch:
            if entry.track.error is None:
                parts.setdefault(entry.track, []).append(entry)
            else:
                entry.track._settle([entry])
        if not parts:
            return
        checkpoints: dict[Track, int] = {}
        for track, entries in parts.items():
            for entry in entries:
                if entry.terminal:
                    track.watermark.close(entry.position)
            checkpoints[track] = max(track.checkpoint, track.watermark.value)
        events = [e.event for e in batch if e.track in parts]
        try:
            self.batches += 1
            await self.log.append(events, checkpoints={t.key: c for t, c in checkpoints.items()})
        except Exception as exc:
            if len(parts) == 1:
                [(track, entries)] = parts.items()
                self._fail(track, entries, exc)
                return
            # Find out whose outcomes the log refuses: each lane's alone, so the others go on.
            for track, entries in parts.items():
                try:
                    self.batches += 1
                    await self.log.append([e.event for e in entries], checkpoints={track.key: checkpoints[track]})
                except Exception as exc_alone:
                    self._fail(track, entries, exc_alone)
                else:
                    track._recorded(entries, checkpoints[track])
            return
        for track, entries in parts.items():
            track._recorded(entries, checkpoints[track])

    def _fail(self, track: Track, entries: list[_Entry], error: Exception) -> None:
        logger.error("%s %s: recording %d outcomes failed: %s", *track.key, len(entries), error)
        track._failed(entries, error)
