"""Benchmark: recomputing a shop's loyalty program from its full mirrored history, and one buyer's update.

Run by hand:  .venv/bin/python bench/loyalty_recompute.py [--customers 100000] [--orders 500000]
                                                           [--database sqlite|postgres] [--rounds 3]

Seeds a fresh database (a temporary SQLite file, or the dedicated `bench_loyalty` database on the PostgreSQL
server) with one shop, N customers and M paid orders spread over two years (1 in 20 cancelled, 1 in 10
partly refunded), then times `recompute_program`: the first run (every ledger written) and a second run
(nothing to correct). Then one order arrives for one buyer: the profile builder settles that buyer alone;
its time is compared with the same update in a shop ten times smaller (it should not grow with the shop;
each is the median of three after a warm-up).
Prints each round, the medians and the peak RSS. Target: <= 30 s for 100,000 customers / 500,000 orders.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from connector.database import make_engine, unit_of_work, upgrade
from connector.loyalty_admin import recompute_program
from connector.models import Contact, Customer, Order, Refund, Shop
from sync.profiles import ShopContext, build_dirty_contacts

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
DOMAIN = "bench-loyalty.myshopify.com"


def seed(url: str, customers: int, orders: int) -> int:
    engine = make_engine(url)
    rng = random.Random(7)
    with unit_of_work(engine) as session:
        shop = Shop(domain=DOMAIN, currency="USD", created_at=NOW, loyalty_started_at=NOW - timedelta(days=800),
                    loyalty_rules_at=NOW - timedelta(days=800), brevo_ready_at=NOW)
        session.add(shop)
        session.flush()
        shop_id = shop.id
    assert shop_id is not None
    tables = {m: m.__table__ for m in (Customer, Contact, Order, Refund)}  # type: ignore[attr-defined]
    start = NOW - timedelta(days=730)
    with engine.begin() as conn:
        batch: list[dict] = []
        for i in range(1, customers + 1):
            batch.append({"shop_id": shop_id, "customer_id": i, "contact_key": f"c:{i}", "email": f"b{i}@example.com",
                          "created_at_src": start + timedelta(minutes=rng.randrange(700 * 1440)), "deleted": False,
                          "birthday": f"--{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}" if i % 3 == 0 else None})
            if len(batch) == 5000:
                conn.execute(sa.insert(tables[Customer]), batch)
                conn.execute(sa.insert(tables[Contact]), [
                    {"shop_id": shop_id, "contact_key": b["contact_key"], "customer_id": b["customer_id"],
                     "email": b["email"], "dirty": False, "push_state": "idle", "attempts": 0, "order_count": 0,
                     "total_spent": Decimal(0), "created_at": start} for b in batch])
                batch = []
        if batch:
            conn.execute(sa.insert(tables[Customer]), batch)
            conn.execute(sa.insert(tables[Contact]), [
                {"shop_id": shop_id, "contact_key": b["contact_key"], "customer_id": b["customer_id"],
                 "email": b["email"], "dirty": False, "push_state": "idle", "attempts": 0, "order_count": 0,
                 "total_spent": Decimal(0), "created_at": start} for b in batch])
        rows, refunds = [], []
        for order_id in range(1, orders + 1):
            buyer = rng.randint(1, customers)
            created = start + timedelta(minutes=rng.randrange(729 * 1440))
            total = Decimal(rng.randint(800, 40000)) / 100
            rows.append({"shop_id": shop_id, "order_id": order_id, "contact_key": f"c:{buyer}", "customer_id": buyer,
                         "currency": "USD", "subtotal": total, "points_basis": total, "total": total,
                         "total_tax": Decimal(0), "total_discounts": Decimal(0), "total_shipping": Decimal(0),
                         "financial_status": "paid", "test": False, "subscription": False, "rebill": False,
                         "created_at_src": created, "updated_at_src": created,
                         "cancelled_at": created + timedelta(days=1) if order_id % 20 == 0 else None})
            if order_id % 10 == 3:
                refunds.append({"shop_id": shop_id, "refund_id": order_id, "order_id": order_id,
                                "amount": (total / 3).quantize(Decimal("0.01")),
                                "created_at_src": created + timedelta(days=5)})
            if len(rows) == 10000:
                conn.execute(sa.insert(tables[Order]), rows)
                rows = []
        if rows:
            conn.execute(sa.insert(tables[Order]), rows)
        for i in range(0, len(refunds), 10000):
            conn.execute(sa.insert(tables[Refund]), refunds[i:i + 10000])
    engine.dispose()
    return shop_id


def settled(engine: sa.Engine) -> None:
    """After the bulk writes: nothing dirty, and on PostgreSQL fresh planner statistics (what autovacuum does
    shortly after a bulk load; without them the first plans are made for empty tables)."""
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET dirty = :f"), {"f": False})
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("ANALYZE"))


def one_buyer_updates(engine: sa.Engine, shop_id: int, first_order_id: int) -> float:
    """The median of three single-order updates, after one that warms the connection and caches up."""
    one_buyer_update(engine, shop_id, first_order_id)
    return statistics.median(one_buyer_update(engine, shop_id, first_order_id + i) for i in range(1, 4))


def one_buyer_update(engine: sa.Engine, shop_id: int, order_id: int) -> float:
    """A new paid order for buyer c:1, then the builder settles that contact (what one webhook causes)."""
    with engine.begin() as conn:
        conn.execute(sa.insert(Order.__table__), [{  # type: ignore[attr-defined]
            "shop_id": shop_id, "order_id": order_id, "contact_key": "c:1", "customer_id": 1, "currency": "USD",
            "subtotal": Decimal("42.00"), "points_basis": Decimal("42.00"), "total": Decimal("42.00"),
            "total_tax": Decimal(0), "total_discounts": Decimal(0), "total_shipping": Decimal(0),
            "financial_status": "paid", "test": False, "subscription": False, "rebill": False,
            "created_at_src": NOW, "updated_at_src": NOW}])
        conn.execute(sa.text("UPDATE contacts SET dirty = :t WHERE shop_id = :s AND contact_key = 'c:1'"),
                     {"t": True, "s": shop_id})
    started = time.perf_counter()
    with unit_of_work(engine) as session:
        shop = session.get(Shop, shop_id)
        assert shop is not None
        built = build_dirty_contacts(session, ShopContext.of(shop, NOW))
    assert built == 1
    return time.perf_counter() - started


def fresh(kind: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-loyalty-')) / 'loyalty.db'}"
    sys.path.insert(0, str(Path(__file__).parent))
    from intake import fresh_postgres

    return fresh_postgres(PG_URL, database="bench_loyalty")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--orders", type=int, default=500_000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    first, again, single, small = [], [], [], []
    for round_no in range(1, args.rounds + 1):
        url = fresh(args.database)
        upgrade(url)
        seeded = time.perf_counter()
        shop_id = seed(url, args.customers, args.orders)
        print(f"round {round_no}: seeded in {time.perf_counter() - seeded:.1f} s", flush=True)
        engine = make_engine(url)
        done = recompute_program(engine, DOMAIN, now=NOW)
        first.append(done.seconds)
        print(f"  first recompute  {done.seconds:6.2f} s  buyers {done.buyers:,}  entries {done.entries:,}  "
              f"tiers {done.tiers_changed:,}", flush=True)
        done = recompute_program(engine, DOMAIN, now=NOW)
        again.append(done.seconds)
        print(f"  second recompute {done.seconds:6.2f} s  entries {done.entries:,}", flush=True)
        settled(engine)
        single.append(one_buyer_updates(engine, shop_id, args.orders + 1))
        engine.dispose()
        if round_no == 1:  # the same update in a shop ten times smaller
            url = fresh(args.database)
            upgrade(url)
            small_id = seed(url, args.customers // 10, args.orders // 10)
            engine = make_engine(url)
            recompute_program(engine, DOMAIN, now=NOW)
            settled(engine)
            small.append(one_buyer_updates(engine, small_id, args.orders // 10 + 1))
            engine.dispose()
        print(f"  one buyer's order settled by the builder: {single[-1] * 1000:.1f} ms", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"median first recompute {statistics.median(first):.2f} s, second {statistics.median(again):.2f} s for "
          f"{args.customers:,} customers / {args.orders:,} orders on {args.database} (target <= 30 s); "
          f"one buyer's update {statistics.median(single) * 1000:.1f} ms vs {statistics.median(small) * 1000:.1f} ms "
          f"in a shop ten times smaller; peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
