"""The points ledger in the database: appended once per source key, corrected by new entries, never updated."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import sqlalchemy as sa

from connector.database import unit_of_work
from loyalty.program import BuyerFacts, OrderFacts, RefundFacts, owed
from loyalty.rules import LoyaltyRules
from loyalty.store import append, settle, stored_entries

T0 = datetime(2026, 9, 1, 12, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
RULES = LoyaltyRules(signup_bonus=0)


def _facts(*refunds: RefundFacts, basis: str = "120.00") -> BuyerFacts:
    return BuyerFacts(orders=(OrderFacts(order_id=7, created_at=T0, basis=Decimal(basis), total=Decimal("130.00"),
                                         paid=True, refunds=tuple(refunds)),))


def _rows(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(
            "SELECT contact_key, entry_key, kind, points FROM loyalty_entries ORDER BY id")).all())


def test_settling_writes_what_is_owed_once_and_a_replay_writes_nothing(engine: sa.Engine) -> None:
    ledger = owed(_facts(), RULES, now=NOW, program_start=T0)
    with unit_of_work(engine) as session:
        assert [e.key for e in settle(session, 1, "c:1", ledger, now=NOW)] == ["order:7:earn", "first_order"]
    with unit_of_work(engine) as session:
        assert settle(session, 1, "c:1", ledger, now=NOW) == []
    assert [(r.entry_key, r.points) for r in _rows(engine)] == [("order:7:earn", 120), ("first_order", 50)]


def test_a_late_refund_and_a_changed_order_are_new_entries_and_the_sum_is_what_is_owed(engine: sa.Engine) -> None:
    with unit_of_work(engine) as session:
        settle(session, 1, "c:1", owed(_facts(), RULES, now=NOW, program_start=T0), now=NOW)
    refund = RefundFacts(refund_id=70, amount=Decimal("65.00"), created_at=T0 + timedelta(days=2))
    final = owed(_facts(refund, basis="100.00"), RULES, now=NOW, program_start=T0)
    with unit_of_work(engine) as session:
        settle(session, 1, "c:1", final, now=NOW)
    rows = _rows(engine)
    assert [(r.entry_key, r.points) for r in rows[2:]] == [("order:7:earn#1", -20), ("refund:70", -50)]
    assert sum(r.points for r in rows) == sum(e.points for e in final) == 100


def test_two_writers_of_the_same_entry_store_it_once_and_contacts_stay_apart(engine: sa.Engine) -> None:
    ledger = owed(_facts(), RULES, now=NOW, program_start=T0)
    with unit_of_work(engine) as session:
        append(session, 1, "c:1", ledger, now=NOW)
        append(session, 1, "c:1", ledger, now=NOW)  # a second worker's copy: ignored
        append(session, 1, "c:2", ledger[:1], now=NOW)
    with unit_of_work(engine) as session:
        stored = stored_entries(session, 1, ["c:1", "c:2", "c:3"])
    assert {key: [e.key for e in entries] for key, entries in stored.items()} == {
        "c:1": ["order:7:earn", "first_order"], "c:2": ["order:7:earn"]}
    assert stored["c:1"][0].at == T0  # read back as the aware time it was written with


def test_times_written_in_bulk_read_back_exactly_in_utc(engine: sa.Engine) -> None:
    from datetime import timezone

    from loyalty.program import Entry

    paris = timezone(timedelta(hours=1))
    moments = [T0, T0.replace(microsecond=123456), datetime(2026, 9, 1, 14, 30, tzinfo=paris)]
    with unit_of_work(engine) as session:
        append(session, 1, "c:1", [Entry(f"adjust:{i}", 5, "adjustment", at, "why") for i, at in enumerate(moments)],
               now=NOW)
    with unit_of_work(engine) as session:
        stored = stored_entries(session, 1, ["c:1"])["c:1"]
    assert [e.at for e in stored] == moments
    assert [e.at.utcoffset() for e in stored] == [timedelta(0)] * 3


def test_a_bulk_append_keeps_the_order_given_and_skips_what_is_stored(engine: sa.Engine) -> None:
    from loyalty.program import Entry
    from loyalty.store import append_many

    entries = [(f"c:{i % 7}", Entry(f"order:{i}:earn", i, "earn", T0 + timedelta(minutes=i), f"order {i}"))
               for i in range(1200)]  # enough to take the bulk path on PostgreSQL
    with unit_of_work(engine) as session:
        append_many(session, 1, entries[:300], now=NOW)
        append_many(session, 1, entries, now=NOW)  # the first 300 are already there
        append_many(session, 1, entries[600:], now=NOW)  # and again, in the same transaction
    with unit_of_work(engine) as session:
        stored = stored_entries(session, 1, [f"c:{i}" for i in range(7)])
    assert sum(len(v) for v in stored.values()) == 1200
    assert [e.key for e in stored["c:3"]] == [f"order:{i}:earn" for i in range(3, 1200, 7)]
    assert stored["c:3"][1].at == T0 + timedelta(minutes=10) and stored["c:3"][1].reason == "order 10"
