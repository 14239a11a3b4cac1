"""A world that moves, for trying the pipeline: `pipeline fakes --activity`.

Every `every` seconds one thing happens in one goods owner's systems, chosen by a seeded RNG, so the same seed on
the same world makes the same story:

- a price changes in PowerOffice (the article is written again);
- a customer pays an invoice (it becomes an order in the warehouse);
- the warehouse receives or ships stock (the figure goes back to PowerOffice);
- now and then a product arrives malformed (a price typed as text: a mapping failure, quarantined on the status
  page), and later someone repairs one (the failure ends with the next observation).

The very first step is a malformed product, so the status page has something to explain from the first cycle.
`Activity.tick(now)` is the whole interface: the caller's clock decides which steps are due; nothing here sleeps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from pipeline.fakes.world import FakeTenant, World

Kind = Literal["price", "payment", "stock", "malformed", "repair"]
WEIGHTS: dict[Kind, int] = {"price": 30, "payment": 25, "stock": 30, "malformed": 8, "repair": 7}
MAX_CATCH_UP = 10  # steps made at most per tick after a long pause (a suspended laptop, say)
MALFORMED_PRICES = ("12,50 kr", "n/a", "1 299,-")


@dataclass(frozen=True, slots=True)
class Change:
    at: datetime
    tenant: str
    kind: Kind
    words: str


@dataclass
class Activity:
    world: World
    start: datetime
    seed: int = 2026
    every: timedelta = timedelta(seconds=3)
    steps: int = 0
    broken: list[tuple[str, str]] = field(default_factory=list)  # (tenant, product code) awaiting repair

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.next_at = self.start

    def tick(self, now: datetime) -> list[Change]:
        """Make the steps due by `now` (at most MAX_CATCH_UP; after a longer pause the schedule restarts)."""
        made: list[Change] = []
        while self.next_at <= now and len(made) < MAX_CATCH_UP:
            made.append(self.step(self.next_at))
            self.next_at += self.every
        if self.next_at <= now:
            self.next_at = now + self.every
        return made

    def step(self, at: datetime) -> Change:
        """One change somewhere in the world."""
        kind: Kind = "malformed" if self.steps == 0 else self.rng.choices(list(WEIGHTS), list(WEIGHTS.values()))[0]
        self.steps += 1
        tenant = self.rng.choice(self.world.tenants)
        makers = {
            "price": self._price,
            "payment": self._payment,
            "stock": self._stock,
            "malformed": self._malformed,
            "repair": self._repair,
        }
        for attempt in (kind, "price"):
            change = makers[attempt](tenant, at)
            if change is not None:
                return change
        raise AssertionError("a price change is always possible")  # pragma: no cover

    # ------------------------------------------------------------------------------------------- the changes

    def _price(self, t: FakeTenant, at: datetime) -> Change | None:
        broken = {code for name, code in self.broken if name == t.name}
        products = sorted(
            (p for p in t.company.products.values() if p.get("Code") and p["Code"] not in broken),
            key=lambda p: str(p["Code"]),
        )
        if not products:
            return None
        product = self.rng.choice(products)
        old = _number(product.get("UnitPrice")) or 100.0
        new = round(max(1.0, old * self.rng.uniform(0.9, 1.15)), 2)
        self.world.poweroffice.set_price(t.client_key, product["Code"], new)
        return Change(at, t.name, "price", f"price of {product['Code']} {old:.2f} → {new:.2f}")

    def _payment(self, t: FakeTenant, at: datetime) -> Change | None:
        unpaid = sorted(
            (
                i
                for i in t.company.invoices.values()
                if i["VoucherType"] == "OutgoingInvoice"
                and i.get("Balance") not in (0, 0.0)
                and not i.get("IsReversed")
            ),
            key=lambda i: str(i["InvoiceNo"]),
        )
        if not unpaid:
            return None
        invoice = self.rng.choice(unpaid)
        balance = invoice.get("Balance")
        self.world.poweroffice.pay_invoice(t.client_key, invoice["Id"])
        return Change(at, t.name, "payment", f"invoice {invoice['InvoiceNo']} paid ({balance})")

    def _stock(self, t: FakeTenant, at: datetime) -> Change | None:
        owner = self.world.ongoing.owner(t.goods_owner_id)
        numbers = sorted(owner.articles)
        if not numbers:
            return None  # the warehouse holds no articles until the pipeline has written them
        number = self.rng.choice(numbers)
        info: dict[str, Any] = owner.articles[number].model["inventoryInfo"]
        have = int(_number(info.get("numberOfItems")) or 0)
        if have > 0 and self.rng.random() < 0.5:
            moved = -self.rng.randint(1, min(10, have))
            words = f"shipped {-moved} of {number}"
        else:
            moved = self.rng.randint(5, 40)
            words = f"received {moved} of {number}"
        new = have + moved
        self.world.ongoing.set_inventory(t.goods_owner_id, number, numberOfItems=new, sellableNumberOfItems=new)
        return Change(at, t.name, "stock", f"{words} (now {new})")

    def _malformed(self, t: FakeTenant, at: datetime) -> Change | None:
        code = f"ACT-{self.steps:04d}"
        price = self.rng.choice(MALFORMED_PRICES)
        self.world.poweroffice.add_product(t.client_key, code=code, name=f"Import {code}", UnitPrice=price)
        self.broken.append((t.name, code))
        return Change(at, t.name, "malformed", f"product {code} arrives with its price as text: {price!r}")

    def _repair(self, t: FakeTenant, at: datetime) -> Change | None:
        mine = [b for b in self.broken if b[0] == t.name]
        if not mine:
            return None
        fixed = self.rng.choice(mine)
        self.broken.remove(fixed)
        price = round(self.rng.uniform(10, 500), 2)
        self.world.poweroffice.update_product(t.client_key, fixed[1], UnitPrice=price)
        return Change(at, t.name, "repair", f"product {fixed[1]} repaired: price {price:.2f}")


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
