"""Lifecycle triggers through the real pipeline, with a clock that jumps ahead (time travel)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from connector.clock import ShiftedClock
from connector.models import Shop
from mappings.shop_config import ShopConfig
from tests.integration.harness import Connector, iter_connector
from tests.payloads import T0, checkout, customer, email_consent, order, refund


class Store:
    """A connector whose worker and webhooks share a clock that starts just after T0."""

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.clock = ShiftedClock(T0 + timedelta(minutes=2))

    def post(self, topic: str, payload: dict[str, Any]) -> None:
        assert self.connector.post(topic, payload, triggered_at=self.clock.now()).status_code == 200

    def sync(self) -> None:
        self.connector.worker(clock=self.clock).run(until_idle=True, idle_sleep=0.02)

    def travel(self, **delta: float) -> None:
        self.clock.advance(**delta)
        self.sync()

    def names(self, name: str) -> list[dict[str, Any]]:
        return self.connector.events(name)


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[Store]:
    for connector in iter_connector(engine):
        yield Store(connector)


def _minutes(delta: timedelta) -> float:
    return delta.total_seconds() / 60


def test_an_abandoned_checkout_fires_cart_abandoned_after_the_delay_and_never_twice(store: Store) -> None:
    store.post("checkouts/create", checkout(501, email="cara@example.com", updated=0))
    store.sync()
    assert store.names("cart_abandoned") == []
    store.travel(minutes=50)
    assert store.names("cart_abandoned") == []  # 52 minutes after the last change: not yet
    store.travel(minutes=10)
    [event] = store.names("cart_abandoned")
    props = event["event_properties"]
    assert event["identifiers"] == {"email_id": "cara@example.com"}
    assert props["checkout_id"] == "501" and props["recovery_url"].endswith("/recover")
    assert props["items"] and all({"title", "price", "url", "image"} <= set(i) for i in props["items"])
    store.travel(hours=5)
    assert len(store.names("cart_abandoned")) == 1


def test_an_order_after_the_abandonment_sends_cart_recovered_and_clears_the_cart(store: Store) -> None:
    store.post("checkouts/create", checkout(502, email="dan@example.com", token="chk-502", cart_token="cart-502"))
    store.travel(minutes=61)
    assert len(store.names("cart_abandoned")) == 1
    now = _minutes(store.clock.now() - T0)
    store.post("orders/create", order(9502, customer_id=None, email="dan@example.com", checkout_token="chk-502",
                                      created=now, updated=now))
    store.sync()
    [recovered] = store.names("cart_recovered")
    assert recovered["event_properties"]["checkout_id"] == "502"
    assert recovered["event_properties"]["order_id"] == "9502"
    assert store.connector.contact("dan@example.com")["attributes"].get("CART_URL", "") == ""


def test_an_order_within_the_delay_means_no_abandoned_cart(store: Store) -> None:
    store.post("checkouts/create", checkout(503, email="eve@example.com", token="chk-503", cart_token="cart-503"))
    store.sync()
    store.clock.advance(minutes=10)
    store.post("orders/create", order(9503, customer_id=None, email="eve@example.com", checkout_token="chk-503",
                                      created=12, updated=12))
    store.travel(hours=3)
    assert store.names("cart_abandoned") == [] and store.names("cart_recovered") == []


def test_a_buyer_who_unsubscribed_gets_no_abandoned_cart_trigger(store: Store) -> None:
    store.post("customers/create", customer(61, "fay@example.com"))
    store.post("customers_email_marketing_consent/update", email_consent(61, "fay@example.com", "unsubscribed",
                                                                         at=1))
    store.post("checkouts/create", checkout(504, email="fay@example.com", customer_id=61))
    store.travel(hours=2)
    assert store.names("cart_abandoned") == []
    assert store.connector.contact("fay@example.com")["emailBlacklisted"] is True


def test_first_and_repeat_orders_are_told_apart(store: Store) -> None:
    store.post("orders/create", order(9601, customer_id=71, email="gus@example.com", created=1, updated=1))
    store.post("orders/create", order(9602, customer_id=71, email="gus@example.com", created=5, updated=5))
    store.sync()
    [first] = store.names("first_order_completed")
    [repeat] = store.names("repeat_order_completed")
    assert first["event_properties"]["order_id"] == "9601" and first["event_properties"]["order_sequence"] == 1
    assert repeat["event_properties"]["order_id"] == "9602" and repeat["event_properties"]["order_sequence"] == 2


def test_winback_is_due_after_the_shop_delay_once_per_silence(store: Store) -> None:
    store.post("orders/create", order(9701, customer_id=81, email="hal@example.com", created=1, updated=1))
    store.sync()
    store.travel(days=59)
    assert store.names("winback_due") == []
    store.travel(hours=30)  # a worker that runs all along; a moment more than a day overdue would be history
    [event] = store.names("winback_due")
    assert event["event_properties"]["order_count"] == 1 and event["event_properties"]["days_waited"] == 60
    store.travel(days=30)
    assert len(store.names("winback_due")) == 1


def test_a_review_request_follows_fulfilment_and_skips_a_refunded_order(store: Store) -> None:
    store.post("orders/create", order(9801, customer_id=91, email="ida@example.com", fulfilled=True))
    store.post("orders/create", order(9802, customer_id=91, email="ida@example.com", fulfilled=True,
                                      product_id=7100, total="20.00",
                                      refunds=[refund(98020, 9802, "20.00", line_item_id=98020)]))
    store.sync()
    store.travel(days=6)
    assert store.names("review_request_due") == []
    store.travel(hours=30)
    [event] = store.names("review_request_due")
    assert event["event_properties"]["order_id"] == "9801"
    assert [i["title"] for i in event["event_properties"]["items"]] == ["Product 0"]


def test_replenishment_is_due_after_the_products_own_interval(store: Store) -> None:
    store.post("orders/create", order(9901, customer_id=95, email="jo@example.com", product_id=7300))
    store.sync()
    store.clock.advance(days=20)
    now = _minutes(store.clock.now() - T0)
    store.post("orders/create", order(9902, customer_id=95, email="jo@example.com", product_id=7300,
                                      created=now, updated=now))
    store.travel(days=19)
    assert store.names("replenishment_due") == []
    store.travel(hours=30)
    [event] = store.names("replenishment_due")
    assert event["event_properties"]["product_id"] == "7300"
    assert event["event_properties"]["times_bought"] == 2
    assert float(event["event_properties"]["interval_days"]) == pytest.approx(20, abs=0.1)


def test_buyers_get_rfm_segments_and_a_move_is_announced_once(store: Store) -> None:
    for i in range(5):
        store.post("orders/create", order(9950 + i, customer_id=200 + i, email=f"rfm{i}@example.com",
                                          total=f"{(i + 1) * 40}.00", created=1, updated=1))
    store.sync()
    segments = {i: store.connector.contact(f"rfm{i}@example.com")["attributes"].get("RFM_SEGMENT") for i in range(5)}
    assert all(segments.values()), segments
    assert store.connector.contact("rfm4@example.com")["attributes"]["RFM_SCORE"][2] == "5"  # biggest spender
    before = segments[0]
    now = _minutes(store.clock.now() - T0)
    for n in range(3):  # the smallest buyer comes back three times: frequency and spend jump
        store.post("orders/create", order(9960 + n, customer_id=200, email="rfm0@example.com", total="200.00",
                                          created=now + n, updated=now + n))
    store.sync()
    after = store.connector.contact("rfm0@example.com")["attributes"]["RFM_SEGMENT"]
    assert after != before
    [moved] = [e for e in store.names("segment_changed") if e["identifiers"] == {"email_id": "rfm0@example.com"}]
    assert moved["event_properties"]["from"] == before and moved["event_properties"]["to"] == after


def test_a_shops_configuration_renames_attributes_and_switches_events_off(store: Store) -> None:
    config = ShopConfig.from_toml('[attributes]\nTOTAL_SPENT = "LIFETIME_VALUE"\nCUSTOMER_TAGS = false\n'
                                  '[events]\nfirst_order_completed = false\n')
    with store.connector.engine.begin() as conn:
        conn.execute(sa.update(Shop).values(config=config.to_dict()))
    store.post("orders/create", order(9990, customer_id=300, email="kim@example.com", total="42.00"))
    store.sync()
    attributes = store.connector.contact("kim@example.com")["attributes"]
    assert attributes["LIFETIME_VALUE"] == 42.0 and "TOTAL_SPENT" not in attributes
    assert store.names("first_order_completed") == [] and len(store.names("order_completed")) == 1
    [row] = store.connector.rows("SELECT status FROM outbox WHERE event_name = 'first_order_completed'")
    assert row.status == "disabled"


def test_segment_lists_follow_the_buyer_and_entering_champions_is_a_vip_moment(store: Store) -> None:
    with store.connector.brevo.lock:
        new_list = store.connector.brevo._add_list("New buyers", 1)["id"]
        vip_list = store.connector.brevo._add_list("Champions", 1)["id"]
    config = ShopConfig.from_dict({"segments": {"New": new_list, "Champions": vip_list}})
    with store.connector.engine.begin() as conn:
        conn.execute(sa.update(Shop).values(config=config.to_dict()))
    for i in range(5):  # one order each, same day: the smallest spender is "New", the others potential loyalists
        store.post("orders/create", order(9970 + i, customer_id=400 + i, email=f"seg{i}@example.com",
                                          total=f"{(i + 1) * 40}.00", created=1, updated=1))
    store.sync()
    assert new_list in store.connector.contact("seg0@example.com")["listIds"]
    now = _minutes(store.clock.now() - T0)
    for n in range(3):
        store.post("orders/create", order(9980 + n, customer_id=400, email="seg0@example.com", total="200.00",
                                          created=now + n, updated=now + n))
    store.sync()
    contact = store.connector.contact("seg0@example.com")
    assert contact["attributes"]["RFM_SEGMENT"] == "Champions"
    assert vip_list in contact["listIds"] and new_list not in contact["listIds"]
    [vip] = store.names("vip_entered")
    assert vip["identifiers"] == {"email_id": "seg0@example.com"} and vip["event_properties"]["from"] == "New"


def test_a_reminder_not_yet_sent_is_dropped_when_the_buyer_buys(store: Store) -> None:
    store.post("checkouts/create", checkout(505, email="liv@example.com", token="chk-505", cart_token="cart-505"))
    store.sync()
    store.clock.advance(minutes=61)
    store.connector.brevo.inject_fault(status=503, count=1000, path_prefix="/v3/events")  # Brevo's events are down
    worker = store.connector.worker(clock=store.clock)
    for _ in range(3):
        worker.run_once()
    [pending] = store.connector.rows("SELECT status FROM outbox WHERE event_name = 'cart_abandoned'")
    assert pending.status == "pending"
    store.connector.brevo.clear_faults()
    now = _minutes(store.clock.now() - T0)
    store.post("orders/create", order(9505, customer_id=None, email="liv@example.com", checkout_token="chk-505",
                                      created=now, updated=now))
    store.travel(minutes=10)
    assert store.names("cart_abandoned") == [] and store.names("cart_recovered") == []
    [row] = store.connector.rows("SELECT status FROM outbox WHERE event_name = 'cart_abandoned'")
    assert row.status == "superseded"


def test_an_order_is_announced_as_first_or_repeat_once_whatever_arrives_later(store: Store) -> None:
    store.post("orders/create", order(9611, customer_id=72, email="max@example.com", created=5, updated=5))
    store.sync()
    # An earlier order shows up late: the first one stays announced as the first.
    store.post("orders/create", order(9610, customer_id=72, email="max@example.com", created=1, updated=1))
    store.post("orders/updated", order(9611, customer_id=72, email="max@example.com", created=5, updated=9))
    store.sync()
    sequence = [(e["event_name"], e["event_properties"]["order_id"]) for e in store.connector.events()
                if e["event_name"] in ("first_order_completed", "repeat_order_completed")]
    assert sorted(sequence) == [("first_order_completed", "9611"), ("repeat_order_completed", "9610")]


def test_a_trigger_overdue_by_more_than_the_freshness_window_is_history(store: Store) -> None:
    store.post("orders/create", order(9702, customer_id=82, email="oz@example.com", created=1, updated=1))
    store.sync()
    store.travel(days=62)  # the worker was stopped for two months: the win-back moment is two days old
    assert store.names("winback_due") == []


def test_a_checkout_delivered_a_day_late_fires_no_abandoned_cart(store: Store) -> None:
    store.clock.advance(hours=30)  # the checkout changed at T0; Shopify delivers it 30 hours later
    assert store.connector.post("checkouts/create", checkout(506, email="ned@example.com"),
                                triggered_at=T0).status_code == 200
    store.travel(hours=2)
    assert store.names("cart_abandoned") == []
