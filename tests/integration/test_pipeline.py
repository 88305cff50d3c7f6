"""End to end over loopback: signed webhooks in through the real endpoint, the simulated Brevo's state out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from tests.integration.harness import SHOP, Connector
from tests.payloads import checkout, customer, email_consent, order, refund


def test_an_order_webhook_becomes_a_brevo_contact_and_one_order_completed_event(connector: Connector) -> None:
    assert connector.post("customers/create", customer(1, "ana@example.com")).status_code == 200
    assert connector.post("orders/create", order(101, total="59.90")).status_code == 200
    connector.sync()
    contact = connector.contact("ana@example.com")
    assert contact["ext_id"] == "gid://shopify/Customer/1"
    assert contact["attributes"]["ORDER_COUNT"] == 1
    assert contact["attributes"]["TOTAL_SPENT"] == 59.9
    assert contact["attributes"]["LAST_ORDER_NUMBER"] == "#1001"
    [completed] = connector.events("order_completed")
    assert completed["identifiers"] == {"email_id": "ana@example.com"}
    props = completed["event_properties"]
    assert props["order_id"] == "101" and props["total"] == "59.90" and props["currency"] == "USD"
    assert props["items"][0]["title"] == "Product 0" and props["items"][0]["price"] == "59.90"
    assert len(connector.events("customer_created")) == 1


def test_a_duplicate_delivery_sends_no_second_event(connector: Connector) -> None:
    payload = order(102)
    for _ in range(3):
        assert connector.post("orders/create", payload, event_id="same-event").status_code == 200
    connector.post("orders/create", payload, event_id="another-delivery-same-order")
    connector.sync()
    connector.post("orders/create", payload, event_id="late-redelivery")
    connector.sync()
    assert len(connector.events("order_completed")) == 1
    assert connector.rows("SELECT count(*) AS n FROM inbox")[0].n == 3


def test_reversed_orders_updated_deliveries_end_in_the_newest_state(connector: Connector) -> None:
    newest = order(103, total="80.00", updated=50, fulfilled=True)
    older = order(103, total="80.00", updated=10)
    connector.post("orders/updated", newest)
    connector.post("orders/updated", older)
    connector.sync()
    [row] = connector.rows("SELECT fulfillment_status, updated_at_src FROM orders")
    assert row.fulfillment_status == "fulfilled"
    statuses = [r.status for r in connector.rows("SELECT status FROM inbox ORDER BY id")]
    assert statuses == ["applied", "superseded"]
    assert len(connector.events("order_fulfilled")) == 1


def test_refunds_and_cancellations_change_the_totals(connector: Connector) -> None:
    connector.post("customers/create", customer(1, "ana@example.com"))
    connector.post("orders/create", order(201, total="100.00", number=1001))
    connector.post("orders/create", order(202, total="40.00", number=1002, created=5, updated=5))
    connector.post("refunds/create", refund(901, 201, "30.00"))
    connector.post("orders/cancelled", order(202, total="40.00", number=1002, created=5, updated=9, cancelled=True))
    connector.sync()
    attributes = connector.contact("ana@example.com")["attributes"]
    assert attributes["ORDER_COUNT"] == 1
    assert attributes["TOTAL_SPENT"] == 70
    [refunded] = connector.events("order_refunded")
    assert refunded["event_properties"]["refunded_amount"] == "30.00"
    assert len(connector.events("order_cancelled")) == 1


def test_a_bad_hmac_is_401_and_stores_nothing(connector: Connector) -> None:
    response = connector.post("orders/create", order(104), secret="not-the-secret")
    assert response.status_code == 401
    assert connector.post("orders/create", order(104), headers={"X-Shopify-Hmac-Sha256": ""}).status_code == 401
    assert connector.rows("SELECT count(*) AS n FROM inbox")[0].n == 0


def test_missing_headers_are_400_and_oversized_bodies_413(connector: Connector) -> None:
    assert connector.post("orders/create", order(105), headers={"X-Shopify-Topic": ""}).status_code == 400
    assert connector.post("orders/create", order(105), headers={"X-Shopify-Shop-Domain": ""}).status_code == 400
    big = b'{"id": 1, "note": "' + b"x" * (3 * 1024 * 1024) + b'"}'
    assert connector.post("orders/create", big).status_code == 413
    assert connector.rows("SELECT count(*) AS n FROM inbox")[0].n == 0


def test_the_webhook_path_answers_405_to_anything_but_post(connector: Connector) -> None:
    response = connector.http.get(f"{connector.web.url}/webhooks/shopify")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert connector.rows("SELECT count(*) AS n FROM inbox")[0].n == 0


def test_an_unknown_topic_is_accepted_and_recorded(connector: Connector) -> None:
    assert connector.post("inventory_levels/update", {"inventory_item_id": 1}).status_code == 200
    connector.sync()
    assert [r.status for r in connector.rows("SELECT status FROM inbox")] == ["ignored"]


def test_an_unparseable_payload_is_quarantined_and_does_not_block_the_rest(connector: Connector) -> None:
    broken = order(106)
    broken["updated_at"] = "last tuesday"
    connector.post("orders/create", broken)
    connector.post("orders/create", b"{not json")
    connector.post("orders/create", order(107))
    connector.sync()
    rows = connector.rows("SELECT status, error FROM inbox ORDER BY id")
    assert [r.status for r in rows] == ["failed", "failed", "applied"]
    assert "updated_at" in rows[0].error
    dead = connector.rows("SELECT source, reason FROM dead_letters ORDER BY id")
    assert [d.source for d in dead] == ["inbox", "inbox"]
    assert len(connector.events("order_completed")) == 1


def test_a_brevo_outage_delays_delivery_and_loses_nothing(connector: Connector) -> None:
    connector.brevo.inject_fault(status=503, seconds=2.5, path_prefix="/v3/contacts")
    connector.brevo.inject_fault(status=503, seconds=2.5, path_prefix="/v3/events")
    for i in range(5):
        connector.post("orders/create", order(300 + i, customer_id=10 + i, email=f"buyer{i}@example.com"))
    connector.sync()
    assert len(connector.events("order_completed")) == 5
    for i in range(5):
        assert connector.contact(f"buyer{i}@example.com")["attributes"]["ORDER_COUNT"] == 1
    failed_calls = [c for c in connector.brevo.calls if c.status == 503]
    assert failed_calls, "the outage was not exercised"
    assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0


def test_old_deliveries_update_the_contact_but_fire_no_automation(connector: Connector) -> None:
    connector.post("orders/create", order(108), triggered_at=datetime.now(UTC) - timedelta(days=3))
    connector.sync()
    assert connector.events("order_completed") == []
    assert connector.contact("ana@example.com")["attributes"]["ORDER_COUNT"] == 1
    assert connector.events() == []
    rows = connector.rows("SELECT event_name, target, status FROM outbox ORDER BY event_name")
    assert [(r.event_name, r.target, r.status) for r in rows] == [
        ("brevo_order", "order_history", "delivered"),  # Brevo ecommerce has it, as history
        ("first_order_completed", "event", "skipped"), ("order_completed", "event", "skipped")]
    with connector.brevo.lock:
        assert [(o["id"], o["historical"]) for o in connector.brevo.orders] == [("108", True)]


def test_an_email_change_updates_the_same_brevo_contact(connector: Connector) -> None:
    connector.post("customers/create", customer(1, "old@example.com"))
    connector.sync()
    connector.post("customers/update", customer(1, "new@example.com", updated=5))
    connector.sync()
    with connector.brevo.lock:
        contacts = list(connector.brevo.contacts.values())
    assert [c["email"] for c in contacts] == ["new@example.com"]
    assert contacts[0]["ext_id"] == "gid://shopify/Customer/1"


def test_a_guest_who_creates_an_account_keeps_their_history(connector: Connector) -> None:
    connector.post("orders/create", order(110, customer_id=None, email="guest@example.com", total="25.00"))
    connector.sync()
    assert connector.contact("guest@example.com")["attributes"]["ORDER_COUNT"] == 1
    connector.post("customers/create", customer(55, "guest@example.com", updated=20))
    connector.post("orders/create", order(111, customer_id=55, email="guest@example.com", total="10.00",
                                          number=1002, created=21, updated=21))
    connector.sync()
    with connector.brevo.lock:
        contacts = list(connector.brevo.contacts.values())
    assert len(contacts) == 1
    attributes = contacts[0]["attributes"]
    assert attributes["ORDER_COUNT"] == 2 and attributes["TOTAL_SPENT"] == 35
    assert contacts[0]["ext_id"] == "gid://shopify/Customer/55"
    # Later, a checkout without logging in (same email, no customer id): still the same buyer.
    connector.post("orders/create", order(112, customer_id=None, email="guest@example.com", total="5.00",
                                          number=1003, created=30, updated=30))
    connector.sync()
    with connector.brevo.lock:
        contacts = list(connector.brevo.contacts.values())
    assert len(contacts) == 1 and contacts[0]["attributes"]["ORDER_COUNT"] == 3
    active = connector.rows("SELECT contact_key FROM contacts WHERE merged_into IS NULL")
    assert [r.contact_key for r in active] == ["c:55"]


def test_an_email_unsubscribe_in_shopify_blacklists_the_brevo_contact(connector: Connector) -> None:
    connector.post("customers/create", customer(1, "ana@example.com"))
    connector.post("customers_email_marketing_consent/update", email_consent(1, "ana@example.com", "subscribed",
                                                                             at=1))
    connector.sync()
    assert connector.contact("ana@example.com")["emailBlacklisted"] is False
    connector.post("customers_email_marketing_consent/update", email_consent(1, "ana@example.com", "unsubscribed",
                                                                             at=2))
    connector.sync()
    assert connector.contact("ana@example.com")["emailBlacklisted"] is True
    history = connector.rows("SELECT channel, state FROM consent_history ORDER BY id")
    assert [(h.channel, h.state) for h in history] == [("email", "subscribed"), ("email", "unsubscribed")]


def test_a_buyer_rebuilt_unchanged_after_their_opt_out_was_sent_is_not_sent_again(connector: Connector) -> None:
    # The opt-out goes to Brevo once; the next build leaves the flag out, and is still the same contact.
    connector.post("customers/create", customer(1, "ana@example.com"))
    connector.post("customers_email_marketing_consent/update", email_consent(1, "ana@example.com", "unsubscribed",
                                                                             at=1))
    connector.sync()
    assert connector.contact("ana@example.com")["emailBlacklisted"] is True
    calls = len(connector.brevo.calls)
    connector.post("customers/update", customer(1, "ana@example.com", updated=5))  # a newer version, same facts
    connector.sync()
    [contact] = connector.rows("SELECT dirty, push_state FROM contacts")
    assert (contact.dirty, contact.push_state) == (False, "idle")  # it was built again
    assert [c.path for c in connector.brevo.calls[calls:] if c.method != "GET"] == []


def test_an_abandoned_checkout_sets_the_cart_and_a_later_order_clears_it(connector: Connector) -> None:
    connector.post("customers/create", customer(1, "ana@example.com"))
    connector.post("checkouts/update", checkout(501, email="ana@example.com", customer_id=1, total="80.00"))
    connector.sync()
    attributes = connector.contact("ana@example.com")["attributes"]
    assert attributes["CART_VALUE"] == 80 and attributes["CART_URL"].endswith("/recover")
    assert len(connector.events("checkout_started")) == 1 and len(connector.events("cart_updated")) == 1
    connector.post("orders/create", order(112, checkout_token="chk-token", cart_token="cart-token", created=40,
                                          updated=40))
    connector.sync()
    attributes = connector.contact("ana@example.com")["attributes"]
    assert attributes["CART_VALUE"] == 0 and attributes.get("CART_URL", "") == ""  # "" clears it in Brevo


def test_a_refused_brevo_key_pauses_the_shop_and_keeps_the_work(engine: sa.Engine) -> None:
    from tests.integration.harness import iter_connector

    for connector in iter_connector(engine, brevo_key="revoked-key"):
        connector.post("orders/create", order(113))
        connector.sync()
        [shop] = connector.rows("SELECT status, paused_reason FROM shops WHERE domain = :d", d=SHOP)
        assert shop.status == "paused" and "401" in shop.paused_reason
        assert connector.rows("SELECT status FROM inbox")[0].status in ("pending", "applied")
        assert connector.events() == []


def test_test_orders_count_nowhere_and_fire_nothing(connector: Connector) -> None:
    connector.post("orders/create", order(114, test=True))
    connector.sync()
    assert connector.events() == []
    assert connector.contact("ana@example.com")["attributes"]["ORDER_COUNT"] == 0
