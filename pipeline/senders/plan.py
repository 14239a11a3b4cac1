"""The sender's decision for one lane (stage × tenant), as a pure function of what the log says.

    result = plan(commands, outcomes, checkpoint, head=head, history=history, needs=..., identical=...)

- `commands`: the stage's commands to consider: every one after `checkpoint`, plus the newest command of each
  entity that is re-driven or failed transiently before it (the lane finds those from the entity's history).
- `outcomes`: command position → its outcome events, oldest first (only for the commands given).
- `history`: entity → `History`, what the log said about it before this run (every entity the stage owns).
- `needs(event)`: the entities that must be delivered (and not quarantined) before the command may go.
- `identical(new, last)`: the skip reason when `new` would write what `last` (delivered) already wrote, else None.

The answer is a `Plan`: one decision per command that needs one (`Send`, `Wait` or `Omit`, matched exhaustively by
the lane), the entities that are quarantined, and the checkpoint to store now. The rules (issue 8):
- per entity only the newest command is sent; older ones without a terminal outcome are `Omit`ted as superseded;
- a command is terminal once it has a success, a skip, or a permanent failure; a transient failure is not, so the
  command is sent again;
- an entity is quarantined while the newest of (success, permanent failure, re-drive) is a permanent failure:
  a skip (superseded or any other) never ends a quarantine, only a delivered command or a re-drive does;
- a *new* command for a quarantined entity is tried (new data is the usual fix); the failed command itself is
  not sent again until a re-drive;
- a re-drive sends the entity's newest command again, whatever its outcome;
- "already delivered" means the newest *attempt* (success or failure) for the entity succeeded with the same
  content: a write the server applied but answered with an error is not taken as the last delivered value;
- a command whose `needs` are not all delivered, or are quarantined, waits and names them;
- the checkpoint never moves past a command that is sent or waits (no terminal outcome yet): it is one below the
  oldest of them after `checkpoint`, else `head`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from pipeline.eventlog.base import StoredEvent
from pipeline.events import CommandFailed, CommandSkipped, CommandSucceeded, Event


@dataclass(frozen=True, slots=True)
class Attempt:
    """The newest attempt (success or failure) for an entity, with the command that was attempted."""

    command: StoredEvent
    delivered: bool


@dataclass(frozen=True, slots=True)
class History:
    """What the log says about one entity, before this run."""

    attempt: Attempt | None = None  # the newest CommandSucceeded/CommandFailed, when it matters (see plan)
    delivered: bool = False  # some command of the entity was delivered once
    quarantined: bool = False  # the newest of (success, permanent failure, re-drive) is a permanent failure
    redriven: bool = False  # a re-drive is newer than any outcome: the newest command goes again


@dataclass(frozen=True, slots=True)
class Send:
    """Deliver `command`; `why` says what made it due."""

    command: StoredEvent
    why: str


@dataclass(frozen=True, slots=True)
class Wait:
    """`command` may not go before each entity in `blockers` is delivered and not quarantined."""

    command: StoredEvent
    blockers: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Omit:
    """Record `CommandSkipped(reason)` for `command` without sending it."""

    command: StoredEvent
    reason: str


Decision = Send | Wait | Omit


@dataclass(frozen=True, slots=True)
class Plan:
    sends: tuple[Send, ...] = ()
    waits: tuple[Wait, ...] = ()
    skips: tuple[Omit, ...] = ()
    quarantined: frozenset[str] = frozenset()
    checkpoint: int = 0  # to store now, with the skips

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """Every decision, in command order."""
        out: list[Decision] = [*self.sends, *self.waits, *self.skips]
        return tuple(sorted(out, key=lambda d: d.command.position))


def terminal(outcomes: Sequence[Event]) -> bool:
    """Whether a command with these outcomes is done with: delivered, skipped, or failed for good."""
    return any(
        isinstance(o, CommandSucceeded | CommandSkipped) or (isinstance(o, CommandFailed) and o.permanent)
        for o in outcomes
    )


def _none(_event: Event) -> Iterable[str]:
    return ()


def _never(_new: StoredEvent, _last: StoredEvent) -> str | None:
    return None


def plan(
    commands: Iterable[StoredEvent],
    outcomes: Mapping[int, Sequence[Event]],
    checkpoint: int,
    *,
    head: int,
    history: Mapping[str, History],
    needs: Callable[[Event], Iterable[str]] = _none,
    identical: Callable[[StoredEvent, StoredEvent], str | None] = _never,
) -> Plan:
    """Decide what one lane does in one run. Pure: the same input gives the same plan."""
    by_entity: dict[str, dict[int, StoredEvent]] = defaultdict(dict)
    for command in commands:
        by_entity[command.entity][command.position] = command

    sends: list[Send] = []
    waits: list[Wait] = []
    skips: list[Omit] = []
    for entity in sorted(by_entity, key=lambda e: max(by_entity[e])):
        ordered = [by_entity[entity][p] for p in sorted(by_entity[entity])]
        newest = ordered[-1]
        past = history.get(entity, History())
        for older in ordered[:-1]:
            if not terminal(outcomes.get(older.position, ())):
                skips.append(Omit(older, f"superseded by the command at {newest.position}"))

        answered = outcomes.get(newest.position, ())
        why: str
        if past.redriven:
            why = "re-driven"
        elif terminal(answered):
            continue
        elif answered:
            why = "again after a transient failure"
        elif past.quarantined:
            why = "a new command for a quarantined entity"
        else:
            why = "new"
        attempt = past.attempt
        if attempt is not None and attempt.delivered:
            same = identical(newest, attempt.command)
            if same is not None:
                skips.append(Omit(newest, same))
                continue
        blockers = tuple(sorted(_blockers(needs(newest.event), history)))
        if blockers:
            quarantined = {e for e in blockers if history.get(e, History()).quarantined}
            waits.append(Wait(newest, blockers, wait_reason(blockers, quarantined)))
        else:
            sends.append(Send(newest, why))

    sends.sort(key=lambda s: s.command.position)
    waits.sort(key=lambda w: w.command.position)
    skips.sort(key=lambda s: s.command.position)
    open_positions = [s.command.position for s in sends] + [w.command.position for w in waits]
    open_positions = [p for p in open_positions if p > checkpoint]
    moved = min(open_positions) - 1 if open_positions else head
    return Plan(
        sends=tuple(sends),
        waits=tuple(waits),
        skips=tuple(skips),
        quarantined=frozenset(e for e, h in history.items() if h.quarantined),
        checkpoint=max(checkpoint, moved),
    )


def _blockers(needed: Iterable[str], history: Mapping[str, History]) -> set[str]:
    out = set()
    for entity in needed:
        past = history.get(entity, History())
        if not past.delivered or past.quarantined:
            out.add(entity)
    return out


def wait_reason(blockers: Iterable[str], quarantined: Collection[str]) -> str:
    """Why a command waits: each blocking entity, and whether it is quarantined or not delivered yet."""
    parts = [f"{e} ({'quarantined' if e in quarantined else 'not delivered yet'})" for e in sorted(blockers)]
    return "waits for " + ", ".join(parts)
