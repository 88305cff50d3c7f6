"""Benchmark: the daily RFM recompute of one shop with N buyers, database included (load, score, mark moved).

Run by hand:  .venv/bin/python bench/rfm_recompute.py [--contacts 100000] [--database sqlite|postgres] [--rounds 3]

Seeds a fresh database (a temporary SQLite file, or the dedicated `bench_rfm` database on the PostgreSQL
server) with one shop and N buyers of random cadence, spend and recency, then times `recompute_shop`:
the first day (every buyer gets a score: all are marked for rebuild) and the following days (only buyers
whose score moved; the builder's storing of the new scores in between is emulated, untimed). Prints each
round and the medians. Target: <= 20 s for 100,000 contacts.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from connector.clock import as_utc
from connector.database import make_engine, unit_of_work, upgrade
from connector.models import Contact, Shop
from mappings.rfm import RfmInput, RfmThresholds, score
from sync.segments import recompute_shop

PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def seed(url: str, contacts: int) -> int:
    engine = make_engine(url)
    rng = random.Random(5)
    with unit_of_work(engine) as session:
        shop = Shop(domain="bench-rfm.myshopify.com", currency="USD", created_at=NOW)
        session.add(shop)
        session.flush()
        shop_id = shop.id
    assert shop_id is not None
    table = Contact.__table__  # type: ignore[attr-defined]
    rows = []
    for i in range(contacts):
        orders = 1 + int(rng.paretovariate(2.0)) - 1
        rows.append({"shop_id": shop_id, "contact_key": f"c:{i + 1}", "customer_id": i + 1,
                     "email": f"buyer{i}@example.com", "dirty": False, "push_state": "idle", "attempts": 0,
                     "order_count": orders, "total_spent": Decimal(rng.randint(500, 90000)) / 100 * orders,
                     "last_order_at": NOW - timedelta(days=rng.uniform(0, 720)),
                     "days_between_orders": Decimal(rng.randint(50, 2000)) / 10 if orders > 1 else None,
                     "created_at": NOW - timedelta(days=800)})
    with engine.begin() as conn:
        for start in range(0, len(rows), 5000):
            conn.execute(sa.insert(table), rows[start:start + 5000])
    engine.dispose()
    return shop_id


def store_scores(engine: sa.Engine, shop_id: int, t: RfmThresholds, now: datetime) -> None:
    """The profile builder's part, between two recomputes: each rebuilt contact keeps its new score."""
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT contact_key, order_count, total_spent, last_order_at FROM contacts "
                                    "WHERE shop_id = :s"), {"s": shop_id}).all()
        codes = [{"k": r.contact_key, "code": score(RfmInput(
            last_order_at=as_utc(r.last_order_at) if not isinstance(r.last_order_at, str)
            else datetime.fromisoformat(r.last_order_at).replace(tzinfo=UTC),  # type: ignore[arg-type]
            order_count=r.order_count, total_spent=Decimal(str(r.total_spent))), t, now).code} for r in rows]
        conn.execute(sa.text("UPDATE contacts SET rfm_score = :code, dirty = false WHERE shop_id = :s "
                             "AND contact_key = :k").bindparams(s=shop_id), codes)


def fresh(kind: str) -> str:
    if kind == "sqlite":
        return f"sqlite:///{Path(tempfile.mkdtemp(prefix='bench-rfm-')) / 'rfm.db'}"
    sys.path.insert(0, str(Path(__file__).parent))
    from intake import fresh_postgres

    return fresh_postgres(PG_URL, database="bench_rfm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    first, later = [], []
    for round_no in range(1, args.rounds + 1):
        url = fresh(args.database)
        upgrade(url)
        shop_id = seed(url, args.contacts)
        engine = make_engine(url)
        for day in range(2):
            with unit_of_work(engine) as session:
                shop = session.get(Shop, shop_id)
                assert shop is not None
                started = time.perf_counter()
                result = recompute_shop(session, shop, NOW + timedelta(days=day))
            seconds = time.perf_counter() - started
            (first if day == 0 else later).append(seconds)
            print(f"round {round_no} day {day + 1}: {seconds:6.2f} s  buyers {result.buyers:,}  "
                  f"moved {result.moved:,}  median cadence {result.median_days} days")
            if day == 0 and result.thresholds is not None:
                store_scores(engine, shop_id, result.thresholds, NOW)  # what the builder does, untimed
        engine.dispose()
    print(f"median first day {statistics.median(first):.2f} s, next day {statistics.median(later):.2f} s "
          f"for {args.contacts:,} contacts on {args.database} (target <= 20 s)")


if __name__ == "__main__":
    main()
