"""Benchmark: reconcile's request economy and pace against both fakes.

One goods owner with `--products` products (default 3,000) in PowerOffice, each with an article in Ongoing.
`pipeline reconcile --kind products` and `--kind stock` read both sides in pages (`--page-size` per PowerOffice page,
default 100, so the PowerOffice side takes tens of requests; 500 per Ongoing page). The PowerOffice side runs
through the client's limiter at `--rps` (default 10, PowerOffice's limit per subscription key), the fake enforcing
the same limit with 429s.

Figures:
- requests per side against the ceiling `ceil(N / page size) + 3` (token, groups, the end of the pages), and
  against the baseline of looking each article up on its own (N requests on the Ongoing side);
- bound: the time the key's limit allows for the PowerOffice requests made (`requests / rps`);
  bound_ratio = bound / wall, target ≥ 0.9 (slightly above 1 is possible: the first window's requests all start
  at once).

The last line is machine-readable:

    RESULT products=… requests=… seconds=… bound_ratio=…

Run: .venv/bin/python benchmarks/reconcile.py [--products 3000] [--page-size 100] [--rps 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path

import anyio

from pipeline import reconcile
from pipeline.fakes.world import fake_world


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--products", type=int, default=3000)
    parser.add_argument("--page-size", type=int, default=100)
    parser.add_argument("--article-page-size", type=int, default=500)
    parser.add_argument("--rps", type=float, default=10.0)
    args = parser.parse_args(argv)

    async with fake_world(1, products=args.products, customers=5, invoices=5, requests_per_second=args.rps) as world:
        t = world.tenants[0]
        for product in t.company.products.values():
            world.ongoing.add_article(t.goods_owner_id, str(product["Code"]), str(product.get("Name") or ""))
        n = len(t.company.products)
        with tempfile.TemporaryDirectory() as tmp:
            base = world.settings(Path(tmp) / "pipeline.db", requests_per_second=args.rps)
            settings = dataclasses.replace(
                base,
                poweroffice=dataclasses.replace(base.poweroffice, page_size=args.page_size),
                ongoing=dataclasses.replace(base.ongoing, page_size=args.article_page_size),
            )
            started = time.perf_counter()
            report = await reconcile.run(settings, kinds=["products", "stock"], by="benchmark")
            seconds = time.perf_counter() - started

    requests = report.requests()
    po, wms = requests.get("poweroffice", 0), requests.get("ongoing", 0)
    po_ceiling = math.ceil(n / args.page_size) + 3
    wms_ceiling = math.ceil(n / args.article_page_size) + 3
    bound = po / args.rps
    counts = report.tenants[t.name].kinds["products"].counts()
    print(f"products: {n} (checked {counts['checked']}, agree {counts['agree']}, different {counts['different']})")
    print(f"PowerOffice: {po} requests (ceiling {po_ceiling}), page size {args.page_size}, limit {args.rps:g}/s")
    print(f"Ongoing:     {wms} requests (ceiling {wms_ceiling}; one look-up per article would be {n})")
    print(f"wall {seconds:.2f} s; bound {bound:.2f} s (PowerOffice requests / limit)")
    ratio = bound / seconds if seconds > 0 else 0.0
    print(f"RESULT products={n} requests={po + wms} seconds={seconds:.2f} bound_ratio={ratio:.2f}")


if __name__ == "__main__":
    anyio.run(main, sys.argv[1:])
