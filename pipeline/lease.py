"""The writer's lease: one process at a time sends from an event log.

Two processes sending from one log would both deliver the same commands (an article written twice, two writes for
one goods owner at once), because the per-goods-owner write lock and the rate limiter live inside one process. So
`sync`, `run` and anything else that writes to either API first take the log's lease:

- the lease is an exclusive `flock` on a file beside the database, `<database>.lock`. The operating system drops it
  when the holder's process ends in any way (exit, crash, SIGKILL), so a holder that died never blocks the next
  one, and no expiry or heartbeat is needed;
- the holder writes who it is into the file (command, host, pid, since), so a refusal can name it;
- a second taker is refused at once with `LeaseHeldError` (exit code 2), never queued;
- commands that only read the APIs or only append to the log (`audit`, `replay`, `redrive`) take no lease and run
  beside the holder.

`flock` needs the database on a local file system (SQLite's WAL mode needs that too). Two `Lease`s in one process
also exclude each other: each opens the file afresh.
"""

from __future__ import annotations

import fcntl
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

import orjson

from pipeline.errors import PipelineError


@dataclass(frozen=True, slots=True)
class Holder:
    """Who holds a lease. Read from the lock file, so every field may be missing (a file written half-way)."""

    command: str
    host: str
    pid: int | None
    since: str

    def describe(self) -> str:
        pid = self.pid if self.pid is not None else "?"
        who = f"`pipeline {self.command}`" if self.command not in ("", "?") else "a pipeline process"
        return f"{who} (pid {pid} on host {self.host}, since {self.since})"


class LeaseHeldError(PipelineError):
    """Another process holds the event log's lease. The message names it; exit code 2."""

    exit_code = 2

    def __init__(self, database: Path, holder: Holder) -> None:
        self.database = database
        self.holder = holder
        super().__init__(
            f"{database} is in use by {holder.describe()}; only one process at a time may send from an event log"
            f" (read-only commands such as audit work beside it)"
        )


def lock_path(database: Path) -> Path:
    return database.with_name(database.name + ".lock")


class Lease:
    """The exclusive lease on `database`'s log. `acquire()` (or `with Lease(...)`) takes it; `release()` drops it.

    Raises LeaseHeldError when another process (or another `Lease` in this one) holds it, and PipelineError when
    the lock file cannot be opened at all.
    """

    def __init__(self, database: Path, command: str = "") -> None:
        self.database = Path(database)
        self.path = lock_path(self.database)
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> Lease:
        if self._fd is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PipelineError(f"cannot open the lease file {self.path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise LeaseHeldError(self.database, holder) from None
        except OSError as exc:
            os.close(fd)
            raise PipelineError(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = {"command": self.command, "host": socket.gethostname(), "pid": os.getpid(), "since": since}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, orjson.dumps(record) + b"\n", 0)
        except OSError:
            pass  # the lock is what counts; the record only helps a refused taker name us
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock; the file stays for the next holder

    def holder(self) -> Holder:
        """Who holds the lease now, as written in the lock file."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return Holder("?", "?", None, "?")
        try:
            return _read_holder(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_holder(fd: int) -> Holder:
    try:
        data = orjson.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, orjson.JSONDecodeError):
        data = {}
    if not isinstance(data, dict):
        data = {}
    pid = data.get("pid")
    return Holder(
        command=str(data.get("command", "?")),
        host=str(data.get("host", "?")),
        pid=pid if isinstance(pid, int) else None,
        since=str(data.get("since", "?")),
    )
