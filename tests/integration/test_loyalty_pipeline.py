"""The loyalty program through the real pipeline: webhooks in, ledger settled by the builder, Brevo attributes
and events out (simulated Brevo over loopback). Expected figures are computed by hand in each test."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from connector.database import unit_of_work
from connector.models import Shop
from tests.integration.harness import Connector, iter_connector
from tests.integration.test_lifecycle import Store as LifecycleStore
from tests.payloads import T0, _money, customer, order, refund

LOYALTY_EVENTS = ("loyalty_points_earned", "loyalty_points_reversed", "loyalty_tier_changed",
                  "loyalty_reward_issued", "loyalty_points_expiring", "loyalty_points_expired")


class Store(LifecycleStore):
    """The lifecycle tests' store (one clock for worker and webhooks, just after T0); the program started a
    day before T0, so what happens from T0 on is news."""

    def __init__(self, connector: Connector) -> None:
        super().__init__(connector)
        self.started(T0 - timedelta(days=1))

    def started(self, at: Any) -> None:
        with unit_of_work(self.connector.engine) as session:
            session.execute(sa.update(Shop).values(loyalty_started_at=at, loyalty_rules_at=at))

    def attributes(self, email: str) -> dict[str, Any]:
        attributes: dict[str, Any] = self.connector.contact(email)["attributes"]
        return {k: v for k, v in attributes.items() if k.startswith("LOYALTY_")}

    def events(self, *names: str) -> list[tuple[str, dict[str, Any]]]:
        return [(e["event_name"], e["event_properties"]) for e in self.connector.events()
                if e["event_name"] in (names or LOYALTY_EVENTS)]

    def ledger(self, contact_key: str) -> list[tuple[str, int]]:
        return [(r.entry_key, r.points) for r in self.connector.rows(
            "SELECT entry_key, points FROM loyalty_entries WHERE contact_key = :k ORDER BY id", k=contact_key)]


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[Store]:
    for connector in iter_connector(engine):
        yield Store(connector)


def test_orders_and_a_refund_give_the_hand_computed_balance_tier_and_one_event_per_entry(store: Store) -> None:
    store.post("customers/create", customer(1, "ana@example.com"))
    store.post("orders/create", order(9001, total="50.00", created=1, updated=1))
    store.post("orders/create", order(9002, total="480.00", created=2, updated=2, number=1002))
    store.sync()
    # signup 50 + order 50 + first order 50 + order 480 = 630 earned in 12 months: Silver (500), Gold at 1,500.
    assert store.attributes("ana@example.com") == {
        "LOYALTY_POINTS": 630, "LOYALTY_TIER": "Silver", "LOYALTY_NEXT_TIER": "Gold",
        "LOYALTY_POINTS_TO_NEXT_TIER": 870, "LOYALTY_POINTS_EXPIRE_AT": "2027-11-01"}  # no reward code: none held
    earned = store.events("loyalty_points_earned")
    assert sorted(p["points"] for _, p in earned) == [50, 50, 50, 480]
    assert store.events("loyalty_tier_changed") == []  # the first tier a buyer lands in is not a change

    store.post("refunds/create", refund(9101, 9002, "240.00", line_item_id=90020))
    store.travel(minutes=30)
    # half of order 9002 refunded: half of its 480 points come back; Silver is kept through the grace period.
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 390
    assert store.attributes("ana@example.com")["LOYALTY_TIER"] == "Silver"
    [(_, reversed_)] = store.events("loyalty_points_reversed")
    assert reversed_["points"] == 240 and reversed_["balance"] == 390

    for _ in range(2):  # Shopify delivers again: nothing changes, nothing is sent twice
        store.post("orders/create", order(9002, total="480.00", created=2, updated=2, number=1002))
        store.post("refunds/create", refund(9101, 9002, "240.00", line_item_id=90020))
        store.sync()
    assert len(store.events()) == 5
    assert sum(points for _, points in store.ledger("c:1")) == 390


def test_climbing_a_tier_is_announced_once_with_its_direction(store: Store) -> None:
    store.post("customers/create", customer(2, "bo@example.com"))
    store.post("orders/create", order(9201, customer_id=2, email="bo@example.com", total="300.00"))
    store.sync()
    assert store.attributes("bo@example.com")["LOYALTY_TIER"] == "Bronze"  # 50 + 300 + 50 = 400
    store.post("orders/create", order(9202, customer_id=2, email="bo@example.com", total="200.00", created=5,
                                      updated=5, number=1002))
    store.sync()
    [(_, changed)] = store.events("loyalty_tier_changed")
    assert (changed["from"], changed["to"], changed["direction"]) == ("Bronze", "Silver", "up")
    assert store.attributes("bo@example.com")["LOYALTY_POINTS"] == 600


def test_a_cancelled_order_takes_back_everything_it_earned(store: Store) -> None:
    store.post("orders/create", order(9301, customer_id=3, email="cy@example.com", total="120.00"))
    store.sync()
    assert store.attributes("cy@example.com")["LOYALTY_POINTS"] == 170  # 120 + first order 50
    store.post("orders/cancelled", order(9301, customer_id=3, email="cy@example.com", total="120.00",
                                         cancelled=True, updated=20))
    store.sync()
    # The order earned 120 and the first-order bonus: a cancelled order is no first order, so both go.
    assert store.attributes("cy@example.com")["LOYALTY_POINTS"] == 0


def test_an_order_in_another_currency_earns_on_the_shop_currency_amounts(store: Store) -> None:
    payload = order(9401, customer_id=4, email="di@example.com", total="100.00")
    payload.update(presentment_currency="EUR", currency="EUR", subtotal_price="92.00", total_price="92.00",
                   subtotal_price_set={"shop_money": {"amount": "100.00", "currency_code": "USD"},
                                       "presentment_money": {"amount": "92.00", "currency_code": "EUR"}})
    store.post("orders/create", payload)
    store.sync()
    assert store.attributes("di@example.com")["LOYALTY_POINTS"] == 150  # 100 USD + first order 50


def test_prices_with_tax_included_earn_on_the_amount_without_tax(store: Store) -> None:
    payload = order(9451, customer_id=45, email="ed@example.com", total="120.00")
    payload["taxes_included"] = True
    payload["line_items"][0]["tax_lines"] = [{"price": "20.00", "rate": 0.2, "title": "VAT",
                                              "price_set": _money("20.00")}]
    store.post("orders/create", payload)
    store.sync()
    assert store.attributes("ed@example.com")["LOYALTY_POINTS"] == 150  # 120 - 20 VAT + first order 50


def test_points_expire_a_year_after_the_last_order_with_a_warning_a_month_before(store: Store) -> None:
    store.post("orders/create", order(9501, customer_id=5, email="fa@example.com", total="80.00"))
    store.sync()
    assert store.attributes("fa@example.com")["LOYALTY_POINTS_EXPIRE_AT"] == "2027-11-01"
    store.travel(days=300)
    assert store.events("loyalty_points_expiring") == []
    store.travel(days=36)  # 2027-10-03: within 30 days of the expiry
    [(_, warning)] = store.events("loyalty_points_expiring")
    assert warning["points"] == 130 and warning["expires_at"] == "2027-11-01"
    store.travel(days=29)  # 2027-11-01, just past the expiry (the worker wakes for it)
    [(_, expired)] = store.events("loyalty_points_expired")
    assert expired["points"] == 130
    assert store.attributes("fa@example.com")["LOYALTY_POINTS"] == 0
    assert "LOYALTY_POINTS_EXPIRE_AT" not in store.attributes("fa@example.com")  # cleared
    store.travel(days=30)
    assert len(store.events("loyalty_points_expiring", "loyalty_points_expired")) == 2


def test_a_guest_who_creates_an_account_keeps_their_points_once(store: Store) -> None:
    store.post("orders/create", order(9601, customer_id=None, email="gu@example.com", total="70.00"))
    store.sync()
    assert store.attributes("gu@example.com")["LOYALTY_POINTS"] == 120  # 70 + first order; a guest has no signup
    store.post("customers/create", customer(6, "gu@example.com"))
    store.post("orders/updated", order(9601, customer_id=6, email="gu@example.com", total="70.00", updated=9))
    store.sync()
    assert store.attributes("gu@example.com")["LOYALTY_POINTS"] == 170  # + the account's signup bonus
    assert sum(points for _, points in store.ledger("c:6")) == 170
    assert sorted(p["points"] for _, p in store.events("loyalty_points_earned")) == [50, 50, 70]


def test_history_before_the_program_started_sets_balances_without_a_single_event(store: Store) -> None:
    store.started(T0 + timedelta(days=10))  # the shop connects ten days after these orders
    store.post("customers/create", customer(7, "ha@example.com"))
    store.post("orders/create", order(9701, customer_id=7, email="ha@example.com", total="900.00"))
    store.clock.advance(days=10, minutes=5)
    store.sync()
    assert store.attributes("ha@example.com")["LOYALTY_POINTS"] == 1000
    assert store.attributes("ha@example.com")["LOYALTY_TIER"] == "Silver"
    assert store.events() == []


def test_rules_that_change_recompute_balances_silently_and_new_orders_follow_them(store: Store) -> None:
    store.post("orders/create", order(9801, customer_id=8, email="io@example.com", total="100.00"))
    store.sync()
    assert store.attributes("io@example.com")["LOYALTY_POINTS"] == 150
    before = len(store.events())
    with unit_of_work(store.connector.engine) as session:
        session.execute(sa.update(Shop).values(loyalty_rules={"earn": {"points_per_unit": "2"}},
                                               loyalty_rules_at=store.clock.now()))
        session.execute(sa.text("UPDATE contacts SET dirty = :t"), {"t": True})
    store.sync()
    assert store.attributes("io@example.com")["LOYALTY_POINTS"] == 250  # 2 per unit, recomputed
    assert len(store.events()) == before
    store.post("orders/create", order(9802, customer_id=8, email="io@example.com", total="10.00", number=1002,
                                      created=30, updated=30))
    store.travel(minutes=30)
    assert store.attributes("io@example.com")["LOYALTY_POINTS"] == 270
    assert [p["points"] for _, p in store.events("loyalty_points_earned")][-1] == 20
