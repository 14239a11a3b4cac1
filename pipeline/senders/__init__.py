"""Senders: deliver commands from the log and record the outcomes. See `pipeline.senders.base` for the contract.

    sender = Sender(log, tenants, ongoing=ongoing_client, poweroffice=poweroffice_client, parallel=8)
    summary = await sender.run_once()

`ongoing` / `poweroffice` are anything with `for_tenant(tenant)` returning a target (`OngoingClient`,
`PowerOfficeClient`, or a test stand-in); leaving one out leaves its stage out. Retries (backoff with jitter,
Retry-After, bounded attempts and time) live in those clients' RetryPolicy, so the sender takes none of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

from pipeline.clients.ongoing import OngoingClient
from pipeline.config import TenantSettings
from pipeline.eventlog.base import EventLog
from pipeline.senders.base import SendSummary, Stage, StageRunner, TenantSummary
from pipeline.senders.breaker import Breakers
from pipeline.senders.ongoing import OngoingStage, OngoingTarget
from pipeline.senders.poweroffice import StockBackStage, StockTarget


class OngoingTargets(Protocol):
    def for_tenant(self, tenant: TenantSettings, /) -> OngoingTarget: ...


class StockTargets(Protocol):
    def for_tenant(self, tenant: TenantSettings, /) -> StockTarget: ...


class Sender(StageRunner):
    """The Ongoing stage (articles, orders) and the PowerOffice stock write-back, for `tenants`.

    `parallel`: lanes (tenants) at once per stage; `stock_in_flight`: stock patches one tenant may have waiting
    at the PowerOffice limiter; `breakers`: the circuit breakers, kept across runs by the caller;
    `ongoing_settle`: seconds to wait after an Ongoing write that got no answer before the next write of that goods
    owner (default: the client's timeout), when `ongoing` is an `OngoingClient`.
    """

    def __init__(
        self,
        log: EventLog,
        tenants: Sequence[TenantSettings],
        *,
        ongoing: OngoingTargets | None = None,
        poweroffice: StockTargets | None = None,
        parallel: int = 8,
        stock_in_flight: int = 4,
        breakers: Breakers | None = None,
        ongoing_settle: float | None = None,
    ) -> None:
        stages: list[Stage] = []
        if isinstance(ongoing, OngoingClient):
            # Writes go through a twin of the client that makes one attempt per call; the stage retries them
            # under the client's policy, and settles after a write that got no answer (one write in flight, truly).
            single = OngoingClient(
                ongoing.session, ongoing.settings, policy=replace(ongoing.policy, attempts=1), clock=ongoing.clock
            )
            settle = ongoing.settings.timeout_seconds if ongoing_settle is None else ongoing_settle
            stages.append(
                OngoingStage(ongoing.for_tenant, writers=single.for_tenant, policy=ongoing.policy, settle=settle)
            )
        elif ongoing is not None:
            stages.append(OngoingStage(ongoing.for_tenant))
        if poweroffice is not None:
            stages.append(StockBackStage(poweroffice.for_tenant, in_flight=stock_in_flight))
        super().__init__(log, stages, tenants, parallel=parallel, breakers=breakers)


__all__ = [
    "Breakers",
    "OngoingStage",
    "OngoingTargets",
    "SendSummary",
    "Sender",
    "StageRunner",
    "StockBackStage",
    "StockTargets",
    "TenantSummary",
]
