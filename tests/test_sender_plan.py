"""The sender's decision, `plan`, as a table: one row per rule (issue 8), no I/O.

Each row gives the lane's commands, their outcomes, the stored checkpoint and each entity's history, and the
exact `Plan` expected. Positions are small integers; the head of the log is 100.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.eventlog.base import StoredEvent
from pipeline.events import (
    ArticleUpsertRequested,
    CommandFailed,
    CommandSkipped,
    CommandSucceeded,
    Event,
    OrderUpsertRequested,
    StockPatchRequested,
)
from pipeline.senders.ongoing import OngoingStage
from pipeline.senders.plan import Attempt, History, Omit, Plan, Send, Wait, plan
from pipeline.senders.poweroffice import StockBackStage

HEAD = 100
ONGOING = OngoingStage(lambda _tenant: None)  # type: ignore[arg-type,return-value]  # only its pure hooks are used
STOCK = StockBackStage(lambda _tenant: None)  # type: ignore[arg-type,return-value]


def stored(position: int, entity: str, event: Event) -> StoredEvent:
    return StoredEvent(
        position, datetime(2026, 11, 29, tzinfo=UTC), "acme", entity, event.TYPE, 1, event, None, None, str(position)
    )


def art(position: int, number: str = "A1", name: str = "x") -> StoredEvent:
    return stored(position, f"article:{number}", ArticleUpsertRequested({"articleNumber": number, "articleName": name}))


def order(position: int, invoice: str = "inv-1", articles: Sequence[str] = ("A1",)) -> StoredEvent:
    body = {"orderNumber": invoice, "goodsOwnerOrderId": invoice}
    return stored(position, f"order:{invoice}", OrderUpsertRequested(body, invoice, list(articles)))


def stock(position: int, value: float, product: int = 7) -> StoredEvent:
    return stored(position, f"stockback:{product}", StockPatchRequested(product, "P7", value))


def ok(command: int) -> CommandSucceeded:
    return CommandSucceeded(command, {}, 1)


def failed(command: int, *, permanent: bool) -> CommandFailed:
    return CommandFailed(command, 400 if permanent else 503, "no", 1, permanent)


def skipped(command: int, reason: str = "superseded") -> CommandSkipped:
    return CommandSkipped(command, reason)


DELIVERED = History(delivered=True)
QUARANTINED = History(quarantined=True)


def row(
    commands: Sequence[StoredEvent],
    expected: Plan,
    *,
    outcomes: Mapping[int, Sequence[Event]] | None = None,
    checkpoint: int = 0,
    history: Mapping[str, History] | None = None,
    stage: Any = ONGOING,
    id: str,
) -> Any:
    return pytest.param(commands, outcomes or {}, checkpoint, history or {}, stage, expected, id=id)


A5, A6, A7 = art(5, name="five"), art(6, name="six"), art(7, name="seven")
O8 = order(8)
S5, S7, S9 = stock(5, 5.0), stock(7, 7.0), stock(9, 5.0)

CASES = [
    row([A5], Plan(sends=(Send(A5, "new"),), checkpoint=4), id="new-command-is-sent"),
    row(
        [A5, A6, A7],
        Plan(
            sends=(Send(A7, "new"),),
            skips=(Omit(A5, "superseded by the command at 7"), Omit(A6, "superseded by the command at 7")),
            checkpoint=6,
        ),
        id="only-the-newest-is-sent-older-ones-superseded",
    ),
    row([A5], Plan(checkpoint=HEAD), outcomes={5: [ok(5)]}, id="answered-command-needs-nothing"),
    row(
        [A5],
        Plan(sends=(Send(A5, "again after a transient failure"),), checkpoint=4),
        outcomes={5: [failed(5, permanent=False)]},
        id="transient-failure-is-sent-again-and-holds-the-checkpoint",
    ),
    row(
        [A5],
        Plan(quarantined=frozenset({"article:A1"}), checkpoint=HEAD),
        outcomes={5: [failed(5, permanent=True)]},
        history={"article:A1": QUARANTINED},
        id="permanent-failure-quarantines-and-is-not-sent-again",
    ),
    row(
        [A6, A7],
        Plan(
            sends=(Send(A7, "a new command for a quarantined entity"),),
            skips=(Omit(A6, "superseded by the command at 7"),),
            quarantined=frozenset({"article:A1"}),
            checkpoint=6,
        ),
        checkpoint=5,
        history={"article:A1": QUARANTINED},
        id="rule1-new-commands-for-a-quarantined-entity-the-newest-is-tried",
    ),
    row(
        [A6, A7],
        Plan(
            sends=(Send(A7, "a new command for a quarantined entity"),),
            quarantined=frozenset({"article:A1"}),
            checkpoint=6,
        ),
        outcomes={6: [skipped(6)]},
        checkpoint=5,
        history={"article:A1": QUARANTINED},
        id="rule1-superseded-skip-never-ends-quarantine",
    ),
    row(
        [A5, order(6, "inv-1", ["A2"]), art(7, "A3")],
        Plan(
            sends=(Send(art(7, "A3"), "new"),),
            waits=(Wait(order(6, "inv-1", ["A2"]), ("article:A2",), "waits for article:A2 (not delivered yet)"),),
            checkpoint=5,
        ),
        outcomes={5: [ok(5)]},
        id="rule1-checkpoint-never-passes-a-command-without-an-outcome",
    ),
    row(
        [A5, A6],
        Plan(sends=(Send(A6, "new"),), skips=(Omit(A5, "superseded by the command at 6"),), checkpoint=5),
        outcomes={5: [failed(5, permanent=False)]},
        id="a-transiently-failed-command-is-superseded-by-a-newer-one",
    ),
    row(
        [A5],
        Plan(sends=(Send(A5, "again after a transient failure"),), checkpoint=HEAD),
        outcomes={5: [failed(5, permanent=False)]},
        checkpoint=20,
        id="a-transient-failure-from-before-the-checkpoint-is-sent-again-without-moving-it-back",
    ),
    row(
        [A5, O8],
        Plan(
            sends=(Send(A5, "a new command for a quarantined entity"),),
            waits=(Wait(O8, ("article:A1",), "waits for article:A1 (quarantined)"),),
            quarantined=frozenset({"article:A1"}),
            checkpoint=4,
        ),
        history={"article:A1": History(delivered=True, quarantined=True)},
        id="rule9-order-waits-while-the-new-command-for-its-quarantined-article-is-tried",
    ),
    row(
        [A5],
        Plan(sends=(Send(A5, "re-driven"),), checkpoint=HEAD),
        outcomes={5: [failed(5, permanent=True)]},
        checkpoint=10,
        history={"article:A1": History(redriven=True)},
        id="redrive-sends-the-newest-command-again-from-before-the-checkpoint",
    ),
    row(
        [A5],
        Plan(skips=(Omit(A5, "identical to the command at 5, which was delivered"),), checkpoint=HEAD),
        outcomes={5: [ok(5)]},
        checkpoint=10,
        history={"article:A1": History(attempt=Attempt(A5, delivered=True), delivered=True, redriven=True)},
        id="redrive-of-a-delivered-entity-is-a-skip",
    ),
    row(
        [art(9, name="five")],
        Plan(skips=(Omit(art(9, name="five"), "identical to the command at 5, which was delivered"),), checkpoint=HEAD),
        checkpoint=8,
        history={"article:A1": History(attempt=Attempt(A5, delivered=True), delivered=True)},
        id="rule2-same-as-the-newest-attempt-delivered-is-skipped",
    ),
    row(
        [art(9, name="five")],
        Plan(sends=(Send(art(9, name="five"), "new"),), checkpoint=8),
        checkpoint=8,
        history={"article:A1": History(attempt=Attempt(A7, delivered=False), delivered=True)},
        id="rule2-back-to-the-delivered-body-after-a-failed-attempt-is-sent",
    ),
    row(
        [S9],
        Plan(sends=(Send(S9, "new"),), checkpoint=8),
        checkpoint=8,
        history={"stockback:7": History(attempt=Attempt(S7, delivered=False), delivered=True)},
        stage=STOCK,
        id="rule2-stock-5-delivered-7-applied-but-failed-back-to-5-is-sent",
    ),
    row(
        [S9],
        Plan(skips=(Omit(S9, "StockOnHand 5 was delivered already (command at 5)"),), checkpoint=HEAD),
        checkpoint=8,
        history={"stockback:7": History(attempt=Attempt(S5, delivered=True), delivered=True)},
        stage=STOCK,
        id="rule2-stock-equal-to-the-newest-delivered-attempt-is-skipped",
    ),
    row(
        [O8],
        Plan(waits=(Wait(O8, ("article:A1",), "waits for article:A1 (not delivered yet)"),), checkpoint=7),
        id="rule9-order-waits-for-an-article-never-delivered",
    ),
    row(
        [O8],
        Plan(
            waits=(Wait(O8, ("article:A1",), "waits for article:A1 (quarantined)"),),
            quarantined=frozenset({"article:A1"}),
            checkpoint=7,
        ),
        history={"article:A1": History(delivered=True, quarantined=True)},
        id="rule9-order-waits-for-a-quarantined-article",
    ),
    row(
        [O8],
        Plan(sends=(Send(O8, "new"),), checkpoint=7),
        history={"article:A1": DELIVERED},
        id="rule9-order-with-its-articles-delivered-is-sent",
    ),
]


@pytest.mark.parametrize(("commands", "outcomes", "checkpoint", "history", "stage", "expected"), CASES)
def test_plan(
    commands: Sequence[StoredEvent],
    outcomes: Mapping[int, Sequence[Event]],
    checkpoint: int,
    history: Mapping[str, History],
    stage: Any,
    expected: Plan,
) -> None:
    got = plan(
        commands,
        outcomes,
        checkpoint,
        head=HEAD,
        history=history,
        needs=stage.needs,
        identical=stage.identical,
    )
    assert got == expected


def test_plan_is_the_same_whatever_the_order_of_its_input() -> None:
    """The lane hands commands over as it read them; the plan does not depend on that order."""
    history = {"article:A1": DELIVERED}
    one = plan([A7, O8, A5, A6], {}, 0, head=HEAD, history=history, needs=ONGOING.needs)
    two = plan([A5, A6, A7, O8], {}, 0, head=HEAD, history=history, needs=ONGOING.needs)
    assert one == two
    assert [type(d) for d in one.decisions] == [Omit, Omit, Send, Send]
