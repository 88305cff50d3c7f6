"""Brevo ecommerce objects: products and categories kept in sync, live orders sent as not historical, orders read
as history sent as historical."""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from connector.database import unit_of_work
from connector.models import InboxEntry
from mappings.ecommerce import HISTORY_ORDER
from sync.push import Pusher
from tests.conftest import fixture_payload
from tests.integration.harness import SHOP, Connector
from tests.payloads import order, when


def _product(product_id: int, *, title: str, product_type: str, updated: float = 0) -> dict[str, Any]:
    payload: dict[str, Any] = copy.deepcopy(fixture_payload("products_create__triggerdev.json"))
    payload.update({"id": product_id, "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
                    "title": title, "handle": title.lower().replace(" ", "-"), "product_type": product_type,
                    "updated_at": when(updated), "image": {"src": f"https://cdn.example/{product_id}.jpg"}})
    return payload


def test_products_reach_brevo_with_their_category_and_follow_an_update(connector: Connector) -> None:
    for i in range(3):
        connector.post("products/create", _product(7001 + i, title=f"Bean {i}", product_type="Coffee beans"))
    connector.sync()
    with connector.brevo.lock:
        products = dict(connector.brevo.products)
        categories = dict(connector.brevo.categories)
    assert set(products) == {"7001", "7002", "7003"}
    assert products["7001"]["name"] == "Bean 0"
    assert products["7001"]["url"] == "https://test-store.myshopify.com/products/bean-0"
    assert products["7001"]["imageUrl"] == "https://cdn.example/7001.jpg"
    assert products["7001"]["categories"] == ["type-coffee-beans"]
    assert categories["type-coffee-beans"]["name"] == "Coffee beans"

    connector.post("products/update", _product(7001, title="Bean zero", product_type="Coffee beans", updated=5))
    connector.sync()
    with connector.brevo.lock:
        assert connector.brevo.products["7001"]["name"] == "Bean zero"
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/products/batch"] == 1 and calls["/v3/products"] == 1  # three at once, then one change

    connector.sync()  # nothing changed: nothing sent again
    assert Counter(c.path for c in connector.brevo.calls)["/v3/products"] == 1


def test_a_live_order_is_sent_to_brevo_ecommerce_as_not_historical_and_its_status_follows(
        connector: Connector) -> None:
    connector.post("orders/create", order(8101, total="64.00", lines=2))
    connector.sync()
    connector.post("orders/updated", order(8101, total="64.00", lines=2, fulfilled=True, updated=9))
    connector.sync()
    with connector.brevo.lock:
        orders = [dict(o) for o in connector.brevo.orders]
    assert [(o["id"], o["status"], o["historical"]) for o in orders] == [("8101", "paid", False),
                                                                         ("8101", "fulfilled", False)]
    assert orders[0]["amount"] == 64.0 and orders[0]["identifiers"] == {"email_id": "ana@example.com"}
    assert [(p["productId"], p["quantity"], p["price"]) for p in orders[0]["products"]] == [
        ("7001", 1, 32.0), ("7002", 1, 32.0)]


def test_a_backlog_of_live_orders_goes_out_in_one_batch_that_is_not_historical(connector: Connector) -> None:
    for i in range(30):
        connector.post("orders/create", order(8200 + i, customer_id=300 + i, email=f"o{i}@example.com"))
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/orders/status/batch"] == 1 and calls["/v3/orders/status"] == 0
    with connector.brevo.lock:
        assert len(connector.brevo.orders) == 30
        assert {o["historical"] for o in connector.brevo.orders} == {False}


def test_test_orders_never_reach_brevo_ecommerce(connector: Connector) -> None:
    connector.post("orders/create", order(8301, test=True))
    connector.sync()
    with connector.brevo.lock:
        assert connector.brevo.orders == []


def _as_history(connector: Connector, payloads: list[dict[str, Any]]) -> None:
    """Orders queued the way a backfill or a reconciliation poll queues them: inbox rows that are not webhooks."""
    with unit_of_work(connector.engine) as session:
        session.execute(sa.insert(InboxEntry), [
            {"shop_domain": SHOP, "event_id": f"history:orders:{p['id']}:{p['updated_at']}", "topic": "orders/updated",
             "source": "backfill", "body": json.dumps(p), "status": "pending", "received_at": datetime.now(UTC)}
            for p in payloads])


def test_orders_read_as_history_go_to_brevo_in_historical_batches_and_fire_nothing(connector: Connector) -> None:
    _as_history(connector, [order(8400 + i, customer_id=400 + i, email=f"h{i}@example.com") for i in range(5)])
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/orders/status/batch"] == 1 and calls["/v3/orders/status"] == 0
    with connector.brevo.lock:
        assert sorted((o["id"], o["historical"]) for o in connector.brevo.orders) == [
            (str(8400 + i), True) for i in range(5)]
    assert connector.events() == []
    # Each went as it was queued: the batch carries the bodies stored in the outbox, unaltered.
    stored = {json.loads(r.body)["id"]: json.loads(r.body) for r in connector.rows(
        "SELECT CAST(body AS TEXT) AS body FROM outbox WHERE target = 'order_history'")}
    with connector.brevo.lock:
        sent = {o["id"]: {k: v for k, v in o.items() if k not in ("historical", "batchId")}
                for o in connector.brevo.orders}
    assert sent == stored
    connector.post("orders/updated", order(8400, customer_id=400, email="h0@example.com"))
    connector.sync()  # the same order in the same state, now as a webhook: Brevo has it already
    assert len(connector.brevo.orders) == 5


def test_a_history_batch_brevo_refuses_is_halved_until_the_bad_order_stands_alone(connector: Connector) -> None:
    _as_history(connector, [order(8500 + i, customer_id=500 + i, email=f"r{i}@example.com") for i in range(4)])
    # Refused: the batch of four, then its first half, then that half's first order.
    connector.brevo.inject_fault(status=400, count=3, path_prefix="/v3/orders/status/batch")
    connector.sync()
    with connector.brevo.lock:
        assert sorted(o["id"] for o in connector.brevo.orders) == ["8501", "8502", "8503"]
        assert {o["historical"] for o in connector.brevo.orders} == {True}
    dead = connector.rows("SELECT source, reference, payload FROM dead_letters")
    assert [(r.source, r.reference) for r in dead] == [("event", f"{SHOP}:brevo_order:8500:paid")]
    # The order Brevo refused, kept as the body it was sent as (JSON of the order, not of a string).
    refused = json.loads(dead[0].payload)
    assert refused["id"] == "8500" and refused["identifiers"] == {"email_id": "r0@example.com"}


def test_history_orders_are_read_on_page_after_page_within_a_turn(connector: Connector,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages of 20 rows (ten batches of two), contacts visible as soon as they are imported.
    connector.policy = replace(connector.policy, batch_max_events=2, import_settle_seconds=0.0)
    _as_history(connector, [order(8600 + i, customer_id=600 + i, email=f"p{i}@example.com") for i in range(45)])
    pages: list[tuple[int, int, int | None]] = []  # (read after id, rows read, last id read)
    due = Pusher._due_events

    def reading(self: Pusher, target: str, now: datetime, after: int, engine: sa.Engine | None = None) -> Any:
        rows = due(self, target, now, after, engine)
        if target == HISTORY_ORDER and rows:
            pages.append((after, len(rows), rows[-1].id))
        return rows

    monkeypatch.setattr(Pusher, "_due_events", reading)
    connector.sync()
    # One call read them all: a page, then the next after its last row, then what was left.
    assert [n for _, n, _ in pages] == [20, 20, 5]
    assert pages[0][0] == 0 and pages[1][0] == pages[0][2] and pages[2][0] == pages[1][2]
    with connector.brevo.lock:
        assert sorted(o["id"] for o in connector.brevo.orders) == [str(8600 + i) for i in range(45)]
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/orders/status/batch"] == 23


def test_the_next_page_of_history_orders_is_read_while_brevo_takes_the_page_before(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    # Pages of 20 rows (ten batches of two), contacts visible as soon as they are imported.
    connector.policy = replace(connector.policy, batch_max_events=2, import_settle_seconds=0.0)
    _as_history(connector, [order(8800 + i, customer_id=800 + i, email=f"n{i}@example.com") for i in range(45)])
    pages: list[tuple[int, int, bool]] = []  # (read after id, rows read, read with the read-only engine)
    read = threading.Condition()
    overlapped: list[bool | None] = []  # per batch of history: the next page was read while Brevo took it
    due, post = Pusher._due_events, Pusher._post_batch

    def reading(self: Pusher, target: str, now: datetime, after: int, engine: sa.Engine | None = None) -> Any:
        rows = due(self, target, now, after, engine)
        if target == HISTORY_ORDER and rows:
            with read:
                pages.append((after, len(rows), engine is not None))
                read.notify_all()
        return rows

    def posting(self: Pusher, chunk: list[Any]) -> Any:
        if chunk[0].target == HISTORY_ORDER:
            with read:  # Brevo takes each batch of a full page until the next page is read
                page = sum(1 for after, _, _ in pages if chunk[0].id > after)
                full = pages[page - 1][1] == 20
                overlapped.append(read.wait_for(lambda: len(pages) > page, timeout=5) if full else None)
        return post(self, chunk)

    monkeypatch.setattr(Pusher, "_due_events", reading)
    monkeypatch.setattr(Pusher, "_post_batch", posting)
    connector.sync()
    assert [(n, ahead) for _, n, ahead in pages] == [(20, False), (20, True), (5, True)]
    assert overlapped == [True] * 20 + [None] * 3
    with connector.brevo.lock:
        assert sorted(o["id"] for o in connector.brevo.orders) == [str(8800 + i) for i in range(45)]
    assert connector.rows("SELECT status, count(*) FROM outbox WHERE target = :t GROUP BY status",
                          t=HISTORY_ORDER) == [("delivered", 45)]


def test_history_orders_are_left_for_the_next_turn_once_the_turn_s_share_is_spent(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    connector.policy = replace(connector.policy, batch_max_events=2, import_settle_seconds=0.0, history_seconds=0.0)
    _as_history(connector, [order(8700 + i, customer_id=700 + i, email=f"q{i}@example.com") for i in range(45)])
    pages: list[int] = []
    due = Pusher._due_events

    def reading(self: Pusher, target: str, now: datetime, after: int, engine: sa.Engine | None = None) -> Any:
        rows = due(self, target, now, after, engine)
        if target == HISTORY_ORDER and rows:
            pages.append(after)
        return rows

    monkeypatch.setattr(Pusher, "_due_events", reading)
    connector.sync()
    assert pages == [0, 0, 0]  # a page per turn, each from the first row still pending
    with connector.brevo.lock:
        assert sorted(o["id"] for o in connector.brevo.orders) == [str(8700 + i) for i in range(45)]
