"""`insert_rows` (COPY on PostgreSQL, executemany on SQLite) stores every value as an ORM insert would;
`insert_new` leaves the keys already there alone; `update_many` updates the rows its keys find."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session

from connector import database
from connector.database import (
    COPY_FROM,
    commit_without_waiting,
    insert_new,
    insert_rows,
    one_of,
    unit_of_work,
    update_many,
)
from connector.models import Contact, InboxEntry, Order, OutboxEntry

WHEN = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def _values(row: object, table: sa.Table) -> dict[str, object]:
    return {c.name: getattr(row, c.name) for c in table.columns}


def test_rows_inserted_in_bulk_read_back_as_the_orm_stores_them(engine: Engine) -> None:
    contact = Contact(shop_id=1, contact_key="e:ana@example.com", email="ana@example.com",
                      first_name="Ana \\ Tab\tNew\nline", total_spent=Decimal("1234.5600"),
                      days_between_orders=None, created_at=WHEN, dirty=True, history=True,
                      sent={"attributes": {"TOTAL_SPENT": 1234.56, "NAME": "Ana"}, "listIds": [3]})
    order = Order(shop_id=1, order_id=2**53 + 1, contact_key="e:ana@example.com", total=Decimal("0.0100"),
                    discount_codes=["WELCOME", "ÉTÉ"], tags=None, test=False, created_at_src=WHEN)
    expected = {Contact: _values(contact, Contact.__table__),  # type: ignore[attr-defined]
                Order: _values(order, Order.__table__)}  # type: ignore[attr-defined]
    with unit_of_work(engine) as session:
        for model, values in expected.items():
            insert_rows(session, model.__table__, [values])  # type: ignore[attr-defined]
    with Session(engine) as session:
        stored = {Contact: session.get(Contact, (1, "e:ana@example.com")), Order: session.get(Order, (1, 2**53 + 1))}
        for model, values in expected.items():
            row = stored[model]
            assert row is not None
            got = _values(row, model.__table__)  # type: ignore[attr-defined]
            for name, value in values.items():
                if isinstance(value, datetime):  # SQLite hands back naive UTC
                    assert got[name].replace(tzinfo=UTC) == value, name  # type: ignore[union-attr]
                else:
                    assert got[name] == value, name


@pytest.mark.parametrize("when", [WHEN, datetime(2024, 2, 29, 23, 59, 59), datetime(999, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                                  datetime(2026, 12, 31, 0, 0, tzinfo=UTC)],
                         ids=["aware, milliseconds", "naive, whole seconds", "year 999", "midnight"])
def test_times_inserted_in_bulk_are_stored_as_the_same_text_the_orm_stores(engine: Engine, when: datetime) -> None:
    # Stored times are compared as text in SQL (due times, bookmarks): both ways must write the same text.
    with unit_of_work(engine) as session:
        session.add(Order(shop_id=1, order_id=1, created_at_src=when, updated_at_src=None))
        values = _values(Order(shop_id=1, order_id=2, created_at_src=when, updated_at_src=None),
                         Order.__table__)  # type: ignore[attr-defined]
        insert_rows(session, Order.__table__, [values])  # type: ignore[attr-defined]
    with engine.connect() as conn:
        by_orm, in_bulk = conn.execute(sa.text("SELECT CAST(created_at_src AS TEXT) AS created, "
                                               "updated_at_src IS NULL AS no_update FROM orders ORDER BY order_id"))
    assert in_bulk == by_orm


def test_an_empty_json_value_is_stored_as_an_insert_stores_it(engine: Engine) -> None:
    # Queries tell "never sent" apart by the stored value (sent IS NULL): both ways must store the same one.
    by_orm, in_bulk = Contact(shop_id=1, contact_key="c:1"), Contact(shop_id=1, contact_key="c:2")
    with unit_of_work(engine) as session:
        session.add(by_orm)
        insert_rows(session, Contact.__table__, [_values(in_bulk, Contact.__table__)])  # type: ignore[attr-defined]
    with engine.connect() as conn:
        orm, bulk = conn.execute(sa.text("SELECT sent IS NULL AS no_sent, pending IS NULL AS no_pending "
                                         "FROM contacts ORDER BY contact_key")).all()
    assert (bool(bulk.no_sent), bool(bulk.no_pending)) == (bool(orm.no_sent), bool(orm.no_pending))


def test_a_bulk_insert_that_breaks_a_key_fails_and_writes_nothing(engine: Engine) -> None:
    row = _values(Order(shop_id=1, order_id=7), Order.__table__)  # type: ignore[attr-defined]
    with pytest.raises(sa.exc.IntegrityError), unit_of_work(engine) as session:
        insert_rows(session, Order.__table__, [row, dict(row)])  # type: ignore[attr-defined]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 0


def test_inserting_new_rows_skips_the_keys_already_there_and_keeps_the_order_given(engine: Engine) -> None:
    def rows(ids: list[int]) -> list[dict[str, object]]:
        return [{"shop_domain": "s.myshopify.com", "event_id": f"e{i}", "topic": "orders/create",
                 "body": f'{{"id": {i}}}', "status": "pending", "received_at": WHEN} for i in ids]

    with unit_of_work(engine) as session:
        insert_new(session, InboxEntry, rows([3, 2, 1]), ["shop_domain", "event_id"])
    with unit_of_work(engine) as session:  # a replay, and a key twice in one batch
        insert_new(session, InboxEntry, rows([4, 3, 2, 4, 5]), ["shop_domain", "event_id"])
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT event_id, body FROM inbox ORDER BY id")).all()
    assert [e for e, _ in stored] == ["e3", "e2", "e1", "e4", "e5"]  # ids follow the order given
    assert all(body == f'{{"id": {e[1:]}}}' for e, body in stored)


def test_one_of_finds_exactly_the_rows_whose_value_is_listed(engine: Engine) -> None:
    """`one_of` (an array parameter on PostgreSQL, an IN list on SQLite): a value longer than the column is
    never cut down to match a row it is not; ids beyond 32 bits, many values and none are found as listed."""
    key = "e:" + "a" * 298  # the column's full 300 characters
    rows = [{"shop_id": 1, "contact_key": k, "dirty": False, "push_state": "idle", "attempts": 0}
            for k in (key, "e:ana@example.com")]
    with unit_of_work(engine) as session:
        insert_rows(session, Contact.__table__, rows)  # type: ignore[attr-defined]
        insert_rows(session, Order.__table__, [_values(Order(shop_id=1, order_id=2**53 + n), Order.__table__)
                                               for n in range(3)])  # type: ignore[attr-defined]
    with Session(engine) as session:
        def keys(values: list[str]) -> list[str]:
            return sorted(session.execute(sa.select(Contact.contact_key).where(
                one_of(Contact.contact_key, values, session))).scalars())
        assert keys([key + "b", "e:ana"]) == []  # longer, shorter: neither is either key
        assert keys([key, "e:ana@example.com", "e:nobody"]) == sorted([key, "e:ana@example.com"])
        assert keys([]) == []
        ids = [2**53 + n for n in range(1, 600)]  # more than one IN list's worth
        assert sorted(session.execute(sa.select(Order.order_id).where(
            one_of(Order.order_id, ids, session))).scalars()) == [2**53 + 1, 2**53 + 2]


@pytest.mark.parametrize("mostly_new", [False, True], ids=["conflicts first", "straight in first"])
def test_inserting_many_new_rows_skips_the_keys_already_there_and_keeps_the_order_given(
        engine: Engine, mostly_new: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """As many rows as take the bulk path on PostgreSQL (COPY, then one INSERT ... SELECT; with `mostly_new`,
    first a COPY straight into the table, undone if a key is there), JSON bodies and a key twice among them
    included; four times in one transaction, the third with new keys only."""
    def rows(ids: list[int]) -> list[dict[str, object]]:
        return [{"shop_id": 1, "idempotency_key": f"k{i}", "event_name": "brevo_order", "target": "order_history",
                 "contact_key": f"c:{i % 9}", "body": {"id": str(i), "note": "ça va"}, "status": "pending",
                 "attempts": 0, "created_at": WHEN} for i in ids]

    many = list(range(COPY_FROM + 100, 0, -1))
    fresh = list(range(-2, -2 - COPY_FROM, -1))
    keys = ["shop_id", "idempotency_key"]
    by_conflict: list[int] = []  # per call: how many times the way that leaves keys already there alone ran
    copy_new = database._copy_new

    def counted(*args: Any) -> None:
        by_conflict[-1] += 1
        copy_new(*args)

    monkeypatch.setattr(database, "_copy_new", counted)
    with unit_of_work(engine) as session:
        for ids in (many[:200], many + [7, 0], fresh, many[-COPY_FROM:] + [-1]):
            by_conflict.append(0)
            insert_new(session, OutboxEntry, rows(ids), keys, mostly_new=mostly_new)
    if engine.dialect.name == "postgresql":  # only the calls with a key there already, when mostly new
        assert by_conflict == ([0, 1, 0, 1] if mostly_new else [0, 1, 1, 1])
    with engine.connect() as conn:
        stored = conn.execute(sa.text("SELECT idempotency_key, CAST(body AS TEXT), status, attempts, next_attempt_at "
                                      "FROM outbox ORDER BY id")).all()
    assert [key for key, *_ in stored] == [f"k{i}" for i in [*many, 0, *fresh, -1]]  # ids follow the order given
    assert {json.loads(body)["note"] for _, body, *_ in stored} == {"ça va"}
    assert {(status, attempts, after) for _, _, status, attempts, after in stored} == {("pending", 0, None)}


@pytest.mark.parametrize("size", [3, COPY_FROM + 50])  # on PostgreSQL the second takes COPY and UPDATE ... FROM
def test_updating_many_rows_sets_each_found_rows_values_and_leaves_the_others_alone(engine: Engine, size: int) -> None:
    """Each row's own values, the values fixed for all, a column copied from another; matched on every key (a key
    fixed to a new value is matched on its value before); twice in one transaction."""
    table: sa.Table = Contact.__table__  # type: ignore[attr-defined]
    keys = [f"c:{i}" for i in range(size + 2)]
    with unit_of_work(engine) as session:
        insert_rows(session, table, [
            {"shop_id": 1, "contact_key": key, "email": f"{key}@old.example", "total_spent": Decimal("1.0000"),
             "pending": {"email": f"{key}@example.com", "n": i}, "pending_hash": f"h{i}", "push_state": "pending",
             "attempts": 2, "last_error": "was refused"} for i, key in enumerate(keys)])
    changed = keys[:size]  # the last two are not named; the first is named with a hash it no longer has
    later = datetime(2026, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    with unit_of_work(engine) as session:
        update_many(session, table, [{"shop_id": 1, "contact_key": key, "pending_hash": f"h{i}" if i else "stale",
                                      "total_spent": Decimal(i) / 100, "sent_hash": f"h{i}", "email": "ça@example.com"}
                                     for i, key in enumerate(changed)] + [
                        {"shop_id": 1, "contact_key": "c:nobody", "pending_hash": "h0", "total_spent": Decimal(9),
                         "sent_hash": "h0", "email": None}],
                    ("shop_id", "contact_key", "pending_hash"), copied={"sent": "pending"},
                    fixed={"pending": None, "pending_hash": None, "push_state": "idle", "attempts": 0,
                           "last_error": None, "pushed_at": later})
        update_many(session, table, [{"shop_id": 1, "contact_key": key, "history": True} for key in changed[1:]],
                    ("shop_id", "contact_key"))
    with Session(engine) as session:
        stored = {c.contact_key: c for c in session.execute(sa.select(Contact)).scalars()}
    assert set(stored) == set(keys)  # nothing inserted
    for i, key in enumerate(keys):
        row = stored[key]
        if 0 < i < size:
            assert (row.email, row.total_spent, row.sent_hash, row.pending, row.pending_hash) == (
                "ça@example.com", Decimal(i) / 100, f"h{i}", None, None), key
            assert row.sent == {"email": f"{key}@example.com", "n": i}, key  # the body pending before
            assert (row.push_state, row.attempts, row.last_error, row.history) == ("idle", 0, None, True), key
            assert row.pushed_at is not None and row.pushed_at.replace(tzinfo=UTC) == later, key
        else:
            assert (row.email, row.total_spent, row.sent, row.sent_hash, row.pending_hash, row.push_state,
                    row.attempts, row.last_error, row.pushed_at, row.history) == (
                f"{key}@old.example", Decimal(1), None, None, f"h{i}", "pending", 2, "was refused", None, False), key


def test_a_transaction_that_commits_without_waiting_commits_all_it_wrote_and_only_it_waits_less(
        engine: Engine) -> None:
    """`commit_without_waiting`: on PostgreSQL that one transaction's commit does not wait for the disk (the
    next one on the same connection waits again); on SQLite nothing changes. What it wrote is committed."""
    postgres = engine.dialect.name == "postgresql"
    if postgres:
        with engine.connect() as conn:
            usual = conn.execute(sa.text("SHOW synchronous_commit")).scalar_one()
    with unit_of_work(engine) as session:
        insert_rows(session, Order.__table__, [_values(Order(shop_id=1, order_id=5), Order.__table__)])  # type: ignore[attr-defined]
        commit_without_waiting(session)
        if postgres:
            assert session.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "off"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM orders")).scalar_one() == 1
        if postgres:
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == usual
