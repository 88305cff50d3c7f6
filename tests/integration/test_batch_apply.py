"""A batch of deliveries applied at once gives what applying them one by one would: same rows, same events."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connector.database import insert_new, unit_of_work
from connector.models import InboxEntry
from mappings.shopify import OrderRecord
from sync import mirror
from sync.apply import TOPICS, ApplyContext, Topic, apply_order
from sync.worker import HISTORY_BATCH, INBOX_BATCH, Worker
from tests.integration.harness import SHOP, Connector
from tests.payloads import cart, checkout, customer, order, refund


def test_a_guest_history_and_the_new_account_in_one_batch_announce_one_first_purchase(connector: Connector) -> None:
    connector.post("orders/create", order(110, customer_id=None, email="guest@example.com", total="25.00"))
    connector.post("customers/create", customer(55, "guest@example.com", updated=20))
    connector.post("orders/create", order(111, customer_id=55, email="guest@example.com", total="10.00",
                                          number=1002, created=21, updated=21))
    connector.post("orders/create", order(112, customer_id=None, email="guest@example.com", total="5.00",
                                          number=1003, created=30, updated=30))
    connector.sync()
    assert len(connector.events("first_order_completed")) == 1
    assert len(connector.events("repeat_order_completed")) == 2
    with connector.brevo.lock:
        contacts = list(connector.brevo.contacts.values())
    assert len(contacts) == 1 and contacts[0]["attributes"]["ORDER_COUNT"] == 3
    assert contacts[0]["attributes"]["TOTAL_SPENT"] == 40


def test_the_same_order_twice_in_one_batch_keeps_the_newest_lines(connector: Connector) -> None:
    connector.post("orders/create", order(120, lines=3, total="90.00", updated=1))
    connector.post("orders/updated", order(120, lines=1, total="30.00", updated=5))
    connector.sync()
    assert [r.n for r in connector.rows("SELECT count(*) AS n FROM order_lines")] == [1]
    assert connector.contact("ana@example.com")["attributes"]["TOTAL_SPENT"] == 30
    connector.post("orders/updated", order(120, lines=2, total="60.00", updated=9))
    connector.sync()
    assert [r.n for r in connector.rows("SELECT count(*) AS n FROM order_lines")] == [2]


def test_a_refund_in_the_batch_of_its_order_is_announced_once_with_its_lines(connector: Connector) -> None:
    connector.post("orders/create", order(130, total="100.00", lines=2))
    connector.post("refunds/create", refund(931, 130, "50.00", line_item_id=1301))
    connector.sync()
    [refunded] = connector.events("order_refunded")
    assert [item["title"] for item in refunded["event_properties"]["items"]] == ["Product 1"]
    assert connector.contact("ana@example.com")["attributes"]["TOTAL_SPENT"] == 50


def test_an_order_completing_a_checkout_of_the_same_batch_leaves_no_open_cart(connector: Connector) -> None:
    connector.post("checkouts/create", checkout(140, email="ana@example.com", customer_id=1, token="t-140",
                                                cart_token="c-140"))
    connector.post("orders/create", order(141, checkout_token="t-140", cart_token="c-140", updated=2))
    connector.sync()
    [row] = connector.rows("SELECT completed_at FROM checkouts WHERE checkout_id = 140")
    assert row.completed_at is not None
    attributes = connector.contact("ana@example.com")["attributes"]
    assert attributes.get("CART_URL") in (None, "") and attributes.get("CART_VALUE", 0) == 0


def test_a_cart_update_after_a_new_checkout_of_the_same_cart_in_one_batch_applies_at_once(
        connector: Connector, caplog: pytest.LogCaptureFixture) -> None:
    connector.post("checkouts/create", checkout(150, email="ana@example.com", customer_id=1, token="t-150",
                                                cart_token="c-150", updated=1))
    connector.sync()
    connector.post("checkouts/create", checkout(151, email="ana@example.com", customer_id=1, token="t-151",
                                                cart_token="c-150", updated=3))
    connector.post("carts/update", cart("c-150", updated=4))
    with caplog.at_level(logging.INFO, logger="connector.worker"):
        worker = connector.sync()
    assert not [r for r in caplog.records if "one at a time" in r.getMessage()]  # no fallback was needed
    assert worker.stats.failed == 0
    assert [r.status for r in connector.rows("SELECT status FROM inbox ORDER BY id")] == ["applied"] * 3
    assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0


def test_a_delivery_that_fails_while_applied_is_quarantined_and_the_rest_of_its_batch_lands(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails_on_302(ctx: ApplyContext, rec: Any) -> str:
        if rec.order_id == 302:
            raise RuntimeError("boom")
        return apply_order(ctx, rec)

    monkeypatch.setitem(TOPICS, "orders/create", Topic(OrderRecord.from_payload, fails_on_302))
    for order_id, number in ((301, 1001), (302, 1002), (303, 1003)):
        connector.post("orders/create", order(order_id, number=number, created=order_id - 300,
                                              updated=order_id - 300))
    connector.sync()
    assert [r.status for r in connector.rows("SELECT status FROM inbox ORDER BY id")] == ["applied", "failed",
                                                                                         "applied"]
    [dead] = connector.rows("SELECT reason FROM dead_letters")
    assert dead.reason == "internal error applying orders/create: RuntimeError: boom"
    assert len(connector.events("order_completed")) == 2
    assert connector.contact("ana@example.com")["attributes"]["ORDER_COUNT"] == 2


def test_when_a_batch_is_applied_again_one_by_one_a_guest_written_earlier_still_merges_into_the_customer(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    def fails_on_402(ctx: ApplyContext, rec: Any) -> str:
        if rec.order_id == 402:
            raise RuntimeError("boom")
        return apply_order(ctx, rec)

    monkeypatch.setitem(TOPICS, "orders/create", Topic(OrderRecord.from_payload, fails_on_402))
    connector.post("orders/create", order(401, customer_id=None, email="guest@example.com", total="25.00"))
    connector.post("customers/create", customer(56, "guest@example.com", updated=20))
    connector.post("orders/create", order(402, number=1002))
    connector.sync()
    assert [r.status for r in connector.rows("SELECT status FROM inbox ORDER BY id")] == ["applied", "applied",
                                                                                         "failed"]
    guest = connector.rows("SELECT merged_into FROM contacts WHERE contact_key = 'e:guest@example.com'")
    assert [g.merged_into for g in guest] == ["c:56"]
    assert [o.contact_key for o in connector.rows("SELECT contact_key FROM orders WHERE order_id = 401")] == ["c:56"]
    with connector.brevo.lock:
        contacts = [c for c in connector.brevo.contacts.values() if c.get("email") == "guest@example.com"]
    assert len(contacts) == 1 and contacts[0]["attributes"]["ORDER_COUNT"] == 1


def test_what_a_delivery_failing_at_its_write_created_is_gone_for_the_next_deliveries_of_the_batch(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    # Order 403 and its refund are inserted, then its outbox rows fail: the refund must not linger in the session
    # as if stored, or the refund's own delivery after it would be taken for a replay and lost.
    write_outbox = mirror.insert_outbox

    def fails_for_403(session: Any, rows: list[dict[str, Any]]) -> None:
        if any(":403" in row["idempotency_key"] for row in rows):
            raise RuntimeError("boom")
        write_outbox(session, rows)

    monkeypatch.setattr(mirror, "insert_outbox", fails_for_403)
    connector.post("orders/create", order(403, number=1003, refunds=[refund(93, 403, "20.00")]))
    connector.post("refunds/create", refund(93, 403, "20.00"))
    connector.sync()
    assert [r.status for r in connector.rows("SELECT status FROM inbox ORDER BY id")] == ["failed", "applied"]
    assert [(r.refund_id, r.order_id) for r in connector.rows("SELECT refund_id, order_id FROM refunds")] == [(93, 403)]
    assert connector.rows("SELECT count(*) AS n FROM orders")[0].n == 0


def test_history_is_applied_in_larger_batches_than_webhooks(connector: Connector,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    apply_batch = Worker._apply_batch

    def recording(self: Worker, *args: Any, **kwargs: Any) -> Any:
        size, tally = apply_batch(self, *args, **kwargs)
        sizes.append(size)
        return size, tally

    monkeypatch.setattr(Worker, "_apply_batch", recording)
    for i in range(250):
        connector.post("orders/create", order(20_000 + i, customer_id=300 + i, email=f"b{i}@example.com"))
    connector.sync()
    assert sizes[:2] == [INBOX_BATCH, 50]  # webhooks: someone may be waiting on each
    sizes.clear()
    now = datetime.now(UTC)
    with unit_of_work(connector.engine) as session:  # orders read by a reconciliation poll
        insert_new(session, InboxEntry, [
            {"shop_domain": SHOP, "event_id": f"history:orders:{21_000 + i}", "topic": "orders/create",
             "source": "poll", "status": "pending", "received_at": now,
             "body": json.dumps(order(21_000 + i, customer_id=600 + i, email=f"h{i}@example.com"))}
            for i in range(HISTORY_BATCH + 100)], ["shop_domain", "event_id"])
    connector.sync()
    assert sizes[:2] == [HISTORY_BATCH, 100]
    assert connector.rows("SELECT count(*) AS n FROM orders")[0].n == 250 + HISTORY_BATCH + 100


def test_a_customers_contact_carries_their_name_from_the_start_and_their_orders_write_it_no_more(
        connector: Connector) -> None:
    connector.post("customers/create", customer(1, "ana@example.com", first="Ana", last="Silva"))
    connector.sync()
    [named] = connector.rows("SELECT first_name, last_name FROM contacts WHERE contact_key = 'c:1'")
    assert (named.first_name, named.last_name) == ("Ana", "Silva")
    updates: list[str] = []
    sa.event.listen(connector.engine, "before_cursor_execute",
                    lambda _c, _k, statement, *_: updates.append(statement) if "UPDATE contacts" in statement else None)
    connector.post("orders/create", order(150))
    connector.post("orders/create", order(151, number=1002, created=2, updated=2))
    connector.sync()
    assert not [s for s in updates if "first_name" in s.split("WHERE")[0]]  # their orders name them alike
    assert connector.contact("ana@example.com")["attributes"]["ORDER_COUNT"] == 2


def test_a_customer_without_a_last_name_keeps_the_one_their_order_gave_when_updated(connector: Connector) -> None:
    connector.post("orders/create", order(160))  # its buyer: Ana Silva
    connector.post("customers/create", customer(1, "ana@example.com", first="Ana", last=None, updated=2))  # type: ignore[arg-type]
    connector.sync()
    connector.post("customers/update", customer(1, "ana@example.com", first="Ana", last=None, updated=5))  # type: ignore[arg-type]
    connector.sync()
    [named] = connector.rows("SELECT first_name, last_name FROM contacts WHERE contact_key = 'c:1'")
    assert (named.first_name, named.last_name) == ("Ana", "Silva")
    assert connector.contact("ana@example.com")["attributes"]["LASTNAME"] == "Silva"
