"""The simulated Shopify store: deterministic, signed, realistic webhook history whose figures add up."""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import re
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import phonenumbers
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connector.sandbox.shopify import (
    FX_RATES,
    BuyerTotals,
    SimulatedStore,
    StoreSize,
    WebhookDelivery,
    WebhookSender,
    many_orders,
    sign_webhook,
)

JSON = dict[str, Any]
SECRET = "shpss_sandbox_secret"
SHOP = "demo-store.myshopify.com"
START = datetime(2026, 8, 1, tzinfo=UTC)
CENT = Decimal("0.01")
SHOP_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d-05:00$")
UTC_MILLIS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
MONEY = re.compile(r"^-?\d+\.\d\d$")
# Fields Shopify removed from customer webhook payloads in API 2025-01.
DROPPED_CUSTOMER_FIELDS = {
    "tags", "email_marketing_consent", "sms_marketing_consent", "orders_count", "total_spent",
    "last_order_id", "last_order_name",
}  # fmt: skip
ORDER_TOPICS = {"orders/create", "orders/updated", "orders/paid", "orders/fulfilled", "orders/cancelled"}


def _refuse_float(text: str) -> Decimal:
    raise AssertionError(f"float in a payload: {text}")


def parse(body: bytes) -> JSON:
    payload: JSON = json.loads(body, parse_float=_refuse_float)
    return payload


def amount(money_set: JSON, side: str = "shop_money") -> Decimal:
    return Decimal(money_set[side]["amount"])


def shop_time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


@pytest.fixture(scope="module")
def store() -> SimulatedStore:
    return SimulatedStore(SHOP, start=START)


@pytest.fixture(scope="module")
def deliveries(store: SimulatedStore) -> list[WebhookDelivery]:
    return list(store.deliveries())


@pytest.fixture(scope="module")
def parsed(deliveries: list[WebhookDelivery]) -> list[tuple[str, JSON]]:
    return [(delivery.topic, parse(delivery.body)) for delivery in deliveries]


def of_topic(parsed: list[tuple[str, JSON]], *topics: str) -> list[JSON]:
    return [payload for topic, payload in parsed if topic in topics]


# -- determinism, signatures, identifiers -----------------------------------------------------------


def test_the_same_seed_replays_the_same_history_byte_for_byte(deliveries: list[WebhookDelivery]) -> None:
    again = list(SimulatedStore(SHOP, start=START).deliveries())
    assert again == deliveries
    small = StoreSize(customers=10, guests=2, products=5)
    seven, eight = (list(SimulatedStore(SHOP, size=small, start=START, seed=s).deliveries()) for s in (7, 8))
    assert [d.body for d in seven] != [d.body for d in eight]


def test_every_body_is_compact_utf8_json_without_floats(deliveries: list[WebhookDelivery]) -> None:
    for delivery in deliveries:
        payload = parse(delivery.body)
        compact = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        assert compact == delivery.body


def test_every_signature_verifies_with_the_app_secret_and_no_other(deliveries: list[WebhookDelivery]) -> None:
    for delivery in deliveries:
        headers = delivery.headers(shop_domain=SHOP, secret=SECRET)
        expected = base64.b64encode(
            hmac.new(SECRET.encode(), delivery.body, hashlib.sha256).digest()
        ).decode()
        assert hmac.compare_digest(headers["X-Shopify-Hmac-Sha256"], expected)
        assert not hmac.compare_digest(sign_webhook(delivery.body, "another-secret"), expected)
    headers = deliveries[0].headers(shop_domain=SHOP, secret=SECRET)
    assert headers == {
        "Content-Type": "application/json",
        "X-Shopify-Topic": deliveries[0].topic,
        "X-Shopify-Hmac-Sha256": sign_webhook(deliveries[0].body, SECRET),
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2026-01",
        "X-Shopify-Webhook-Id": deliveries[0].webhook_id,
        "X-Shopify-Event-Id": deliveries[0].event_id,
        "X-Shopify-Triggered-At": deliveries[0].triggered_at,
    }


def test_event_ids_and_webhook_ids_are_unique(deliveries: list[WebhookDelivery]) -> None:
    assert len({d.event_id for d in deliveries}) == len(deliveries)
    assert len({d.webhook_id for d in deliveries}) == len(deliveries)


def test_a_redelivery_keeps_the_event_id_and_gets_a_new_webhook_id(deliveries: list[WebhookDelivery]) -> None:
    first = deliveries[0]
    again = first.redelivered(1)
    assert (again.event_id, again.body, again.topic) == (first.event_id, first.body, first.topic)
    assert again.webhook_id != first.webhook_id
    assert first.redelivered(2).webhook_id not in {first.webhook_id, again.webhook_id}


def test_deliveries_come_in_order_of_triggered_at_within_ninety_days(
    deliveries: list[WebhookDelivery],
) -> None:
    stamps = [d.triggered_at for d in deliveries]
    assert all(UTC_MILLIS.match(stamp) for stamp in stamps)
    assert stamps == sorted(stamps)
    first = datetime.fromisoformat(stamps[0].replace("Z", "+00:00"))
    last = datetime.fromisoformat(stamps[-1].replace("Z", "+00:00"))
    assert first == START
    assert last < START + timedelta(days=90)


def test_ids_are_exact_integers_matching_their_graphql_ids(parsed: list[tuple[str, JSON]]) -> None:
    def walk(node: Any) -> Iterable[JSON]:
        if isinstance(node, dict):
            yield node
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for value in node:
                yield from walk(value)

    checked = 0
    for _topic, payload in parsed:
        for obj in walk(payload):
            ident = obj.get("id")
            if isinstance(ident, int):
                assert not isinstance(ident, bool)
                assert ident < 2**53, "ids must survive a JavaScript consumer too"
            gid = obj.get("admin_graphql_api_id")
            if gid is not None and isinstance(ident, int):
                assert gid.startswith("gid://shopify/") and gid.endswith(f"/{ident}")
                checked += 1
    assert checked > 1000


def test_ids_are_unique_per_resource_type(store: SimulatedStore) -> None:
    for resources in (store.customers, store.products, store.orders, store.checkouts):
        ids = [resource["id"] for resource in resources]
        assert len(ids) == len(set(ids))
    line_ids = [item["id"] for order in store.orders for item in order["line_items"]]
    assert len(line_ids) == len(set(line_ids))
    variant_ids = [variant["id"] for product in store.products for variant in product["variants"]]
    assert len(variant_ids) == len(set(variant_ids))


# -- time --------------------------------------------------------------------------------------------


def _resource_key(topic: str, payload: JSON) -> tuple[str, Any] | None:
    family = topic.split("/")[0]
    if family in ("orders", "customers", "products"):
        return family, payload["id"]
    if family in ("checkouts", "carts"):
        return family, payload["token"]
    return None


def test_updated_at_moves_forward_with_every_change_of_a_resource(parsed: list[tuple[str, JSON]]) -> None:
    history: dict[tuple[str, Any], list[tuple[datetime, JSON]]] = defaultdict(list)
    for topic, payload in parsed:
        key = _resource_key(topic, payload)
        if key is not None:
            history[key].append((shop_time(payload["updated_at"].replace("Z", "+00:00")), payload))
    assert len(history) > 1000
    for key, versions in history.items():
        for (before, old), (after, new) in zip(versions, versions[1:], strict=False):
            assert after >= before, key
            # Two webhooks with the same updated_at are the same change (orders/paid + orders/updated).
            if after == before:
                assert old == new, key


def test_shop_timestamps_carry_the_shop_offset_and_carts_use_utc(store: SimulatedStore) -> None:
    for order in store.orders:
        for name in ("created_at", "updated_at", "processed_at"):
            assert SHOP_TIMESTAMP.match(order[name])
        assert order["cancelled_at"] is None or SHOP_TIMESTAMP.match(order["cancelled_at"])
    for customer in store.customers:
        assert SHOP_TIMESTAMP.match(customer["created_at"])
    for cart in store.carts:
        assert UTC_MILLIS.match(cart["created_at"]) and UTC_MILLIS.match(cart["updated_at"])


# -- money -----------------------------------------------------------------------------------------


def assert_order_adds_up(order: JSON) -> None:
    """Shopify's arithmetic, checked in shop money and in presentment money separately."""
    currency = order["presentment_currency"]
    assert order["currency"] == currency
    lines = order["line_items"]
    qty = sum(item["quantity"] for item in lines)
    for side, code in (("shop_money", "USD"), ("presentment_money", currency)):
        for name in (
            "subtotal_price",
            "total_price",
            "total_tax",
            "total_discounts",
            "total_line_items_price",
        ):
            money = order[f"{name}_set"][side]
            assert money["currency_code"] == code and MONEY.match(money["amount"])
        items = sum((amount(i["price_set"], side) * i["quantity"] for i in lines), Decimal(0))
        discounts = sum(
            (amount(a["amount_set"], side) for i in lines for a in i["discount_allocations"]), Decimal(0)
        )
        line_tax = sum((amount(t["price_set"], side) for i in lines for t in i["tax_lines"]), Decimal(0))
        order_tax = sum((amount(t["price_set"], side) for t in order["tax_lines"]), Decimal(0))
        shipping = sum((amount(s["price_set"], side) for s in order["shipping_lines"]), Decimal(0))
        assert amount(order["total_line_items_price_set"], side) == items
        assert amount(order["total_discounts_set"], side) == discounts
        assert sum((amount(i["total_discount_set"], side) for i in lines), Decimal(0)) == discounts
        assert amount(order["subtotal_price_set"], side) == items - discounts
        assert amount(order["total_tax_set"], side) == line_tax == order_tax
        assert amount(order["total_shipping_price_set"], side) == shipping
        assert amount(order["total_price_set"], side) == items - discounts + line_tax + shipping
    for name in ("subtotal_price", "total_price", "total_tax", "total_discounts", "total_line_items_price"):
        assert order[name] == order[f"{name}_set"]["presentment_money"]["amount"]
    if order["discount_codes"]:
        assert Decimal(order["discount_codes"][0]["amount"]) == Decimal(order["total_discounts"])
    # Presentment amounts are shop amounts at the fixed rate, give or take per-part rounding.
    rate = FX_RATES[currency]
    tolerance = CENT * (qty + 3 * len(lines) + 3)
    for name in ("total_price", "subtotal_price", "total_tax"):
        shop, presentment = amount(order[f"{name}_set"]), amount(order[f"{name}_set"], "presentment_money")
        assert abs(presentment - shop * rate) <= tolerance, (order["name"], name)


def refunded(order: JSON, side: str = "shop_money") -> Decimal:
    total = Decimal(0)
    for refund in order["refunds"]:
        for line in refund["refund_line_items"]:
            total += amount(line["subtotal_set"], side) + amount(line["total_tax_set"], side)
        for adjustment in refund["order_adjustments"]:
            total -= amount(adjustment["amount_set"], side)  # shipping refunds are negative adjustments
    return total


def test_every_order_adds_up_in_both_currencies(
    store: SimulatedStore, parsed: list[tuple[str, JSON]]
) -> None:
    for order in store.orders + of_topic(parsed, *ORDER_TOPICS):
        assert_order_adds_up(order)


def test_refunds_take_back_exactly_what_the_current_totals_lose(store: SimulatedStore) -> None:
    refunded_orders = [order for order in store.orders if order["refunds"]]
    assert refunded_orders
    for order in store.orders:
        for side in ("shop_money", "presentment_money"):
            current = amount(order["current_total_price_set"], side)
            assert current == amount(order["total_price_set"], side) - refunded(order, side)
        transactions = sum(
            (Decimal(t["amount"]) for r in order["refunds"] for t in r["transactions"]), Decimal(0)
        )
        assert transactions == refunded(order, "presentment_money")
        for refund in order["refunds"]:
            assert refund["order_id"] == order["id"]
            assert all(t["kind"] == "refund" and t["status"] == "success" for t in refund["transactions"])
        if order["refunds"] and order["cancelled_at"] is None:
            full = Decimal(order["current_total_price"]) == 0
            assert order["financial_status"] == ("refunded" if full else "partially_refunded")


def test_the_refund_webhook_matches_the_refund_inside_the_order(
    store: SimulatedStore, parsed: list[tuple[str, JSON]]
) -> None:
    inside = {refund["id"]: refund for order in store.orders for refund in order["refunds"]}
    sent = of_topic(parsed, "refunds/create")
    assert len(sent) == len(inside)
    for refund in sent:
        assert refund == inside[refund["id"]]


def test_expected_figures_agree_with_a_recomputation_from_the_orders(store: SimulatedStore) -> None:
    buyers: dict[str, BuyerTotals] = {}
    phone_buyers: dict[str, BuyerTotals] = {}
    for order in store.orders:
        table, key = (buyers, order["email"]) if order["email"] else (phone_buyers, order["phone"])
        count, spent = table.get(key, BuyerTotals(0, Decimal("0.00")))
        if not order["test"] and order["cancelled_at"] is None:
            count, spent = count + 1, spent + amount(order["total_price_set"]) - refunded(order)
            assert spent >= 0
        table[key] = BuyerTotals(count, spent)
    expected = store.expected()
    assert expected.buyers == buyers
    assert expected.phone_buyers == phone_buyers
    assert expected.orders == store.order_count() == len(store.orders)
    assert expected.counted_orders == sum(t.order_count for t in (*buyers.values(), *phone_buyers.values()))
    assert expected.revenue == sum((t.total_spent for t in buyers.values()), Decimal(0)) + sum(
        (t.total_spent for t in phone_buyers.values()), Decimal(0)
    )
    abandoned = {
        c["cart_token"]
        for c in store.checkouts
        if c["completed_at"] is None and (c["email"] or c["phone"] or c.get("customer"))
    }
    assert expected.abandoned_checkouts == len(abandoned) > 0
    assert expected.abandoned_cart_tokens == abandoned
    ordered_tokens = {order["cart_token"] for order in store.orders}
    assert not abandoned & ordered_tokens


# -- the shape of the store ---------------------------------------------------------------------------


def test_the_store_has_the_size_it_was_asked_for(store: SimulatedStore) -> None:
    size = StoreSize()
    assert len(store.customers) == size.customers
    assert len(store.products) == size.products
    registered = [o for o in store.orders if o["customer"] is not None]
    guests = [o for o in store.orders if o["customer"] is None]
    per_customer = Counter(o["customer"]["id"] for o in registered)
    assert abs(len(registered) / size.customers - size.orders_per_customer) < 0.4
    assert size.customers - len(per_customer) > 10, "some customers never order"
    assert max(per_customer.values()) >= 10, "and some order a lot"
    assert len({o["email"] or o["phone"] for o in guests}) == size.guests
    orders = len(store.orders)
    assert sum(o["test"] for o in store.orders) == round(orders * size.test_order_share)
    assert sum(o["cancelled_at"] is not None for o in store.orders) == round(orders * size.cancel_share)
    refunded_not_cancelled = [o for o in store.orders if o["refunds"] and o["cancelled_at"] is None]
    assert len(refunded_not_cancelled) == round(orders * size.refund_share)
    foreign = sum(o["presentment_currency"] != "USD" for o in store.orders)
    assert foreign == round(orders * size.foreign_currency_share)
    abandoned = sum(c["completed_at"] is None for c in store.checkouts)
    assert abs(abandoned / len(store.checkouts) - size.abandoned_share) < 0.01


def test_small_and_empty_stores_work() -> None:
    empty = SimulatedStore(size=StoreSize(customers=0, guests=0, products=0), start=START)
    assert list(empty.deliveries()) == [] and empty.order_count() == 0
    assert empty.expected().buyers == {}
    tiny = SimulatedStore(size=StoreSize(customers=3, guests=1, products=2), start=START)
    assert len(tiny.customers) == 3 and len(tiny.products) == 2
    assert {d.topic for d in tiny.deliveries()} >= {"products/create", "customers/create"}


def test_people_have_realistic_varied_contact_data(store: SimulatedStore) -> None:
    emails = [c["email"] for c in store.customers]
    assert len(set(emails)) == len(emails)
    assert all(re.fullmatch(r"[a-z0-9._]+@example\.(com|org|net)", email) for email in emails)
    assert all(
        re.fullmatch(r"[a-z0-9._]+@example\.(com|org|net)", o["email"]) for o in store.orders if o["email"]
    )
    phones = [c["phone"] for c in store.customers if c["phone"]]
    assert 0.45 < len(phones) / len(store.customers) < 0.75
    e164 = [p for p in phones if re.fullmatch(r"\+\d{8,15}", p)]
    national = [p for p in phones if re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}|0[\d ]{8,12}", p)]
    junk = [p for p in phones if p not in e164 and p not in national]
    assert len(e164) > len(national) > 0 and junk
    countries = Counter(o["shipping_address"]["country_code"] for o in store.orders)
    assert set(countries) == {"US", "CA", "GB", "FR", "DE", "AU"}
    for order in store.orders:
        address = order["shipping_address"]
        if address["country_code"] in ("US", "CA", "AU"):
            assert address["province"] and address["province_code"]
    assert len({o["customer_locale"] for o in store.orders}) >= 5


def test_customer_phones_normalise_to_valid_numbers_that_no_two_customers_share(
    store: SimulatedStore,
) -> None:
    numbers: list[str] = []
    unusable = 0
    for customer in store.customers:
        if not customer["phone"] or "default_address" not in customer:
            continue
        try:
            parsed = phonenumbers.parse(customer["phone"], customer["default_address"]["country_code"])
        except phonenumbers.NumberParseException:
            parsed = None
        if parsed is None or not phonenumbers.is_valid_number(parsed):
            unusable += 1
            continue
        numbers.append(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
    assert len(numbers) == len(set(numbers))
    assert 0 < unusable < 0.15 * (len(numbers) + unusable)


def test_customer_payloads_follow_api_2026_01(store: SimulatedStore, parsed: list[tuple[str, JSON]]) -> None:
    required = {
        "id", "admin_graphql_api_id", "email", "phone", "first_name", "last_name", "state", "verified_email",
        "currency", "created_at", "updated_at", "note", "addresses", "tax_exemptions", "multipass_identifier",
    }  # fmt: skip
    customers = of_topic(parsed, "customers/create", "customers/update")
    assert len(of_topic(parsed, "customers/update")) > 0
    for customer in customers:
        assert required <= customer.keys()
        assert not DROPPED_CUSTOMER_FIELDS & customer.keys()
        if customer["addresses"]:
            assert customer["default_address"] == customer["addresses"][0]
    for order in store.orders:
        if order["customer"] is not None:
            assert not DROPPED_CUSTOMER_FIELDS & order["customer"].keys()
            assert "addresses" not in order["customer"]


def test_customer_edits_change_name_or_phone_and_later_orders_show_them(
    parsed: list[tuple[str, JSON]],
) -> None:
    created = {c["id"]: c for c in of_topic(parsed, "customers/create")}
    changes = set()
    for update in of_topic(parsed, "customers/update"):
        before = created[update["id"]]
        changed = {k for k in before if before[k] != update[k]} - {
            "updated_at",
            "addresses",
            "default_address",
        }
        assert changed and changed <= {"last_name", "phone"}
        changes |= changed
    assert changes == {"last_name", "phone"}
    latest: dict[int, JSON] = {}
    for topic, payload in parsed:
        if topic in ("customers/create", "customers/update"):
            latest[payload["id"]] = payload
        elif topic in ORDER_TOPICS and payload["customer"] is not None:
            embedded, current = payload["customer"], latest[payload["customer"]["id"]]
            assert (embedded["last_name"], embedded["phone"]) == (current["last_name"], current["phone"])


def test_consent_arrives_on_its_own_topics(store: SimulatedStore, parsed: list[tuple[str, JSON]]) -> None:
    email_consents = of_topic(parsed, "customers_email_marketing_consent/update")
    sms_consents = of_topic(parsed, "customers_marketing_consent/update")
    by_id = {c["id"]: c for c in store.customers}
    assert {c["customer_id"] for c in email_consents} == set(by_id)
    states = Counter(c["email_marketing_consent"]["state"] for c in email_consents)
    assert states["subscribed"] > states["not_subscribed"] > states["unsubscribed"] > 0
    for consent in email_consents:
        assert consent.keys() == {"customer_id", "email_address", "email_marketing_consent"}
        assert consent["email_address"] == by_id[consent["customer_id"]]["email"]
        assert consent["email_marketing_consent"].keys() == {"state", "opt_in_level", "consent_updated_at"}
    with_phone_ever = {
        c["id"] for c in of_topic(parsed, "customers/create", "customers/update") if c["phone"]
    }
    assert {c["id"] for c in sms_consents} <= with_phone_ever
    assert {c["sms_marketing_consent"]["state"] for c in sms_consents} == {
        "subscribed", "not_subscribed", "unsubscribed",
    }  # fmt: skip
    for consent in sms_consents:
        assert consent.keys() == {"id", "phone", "sms_marketing_consent"}
        assert consent["phone"]
        assert consent["sms_marketing_consent"].keys() == {
            "state", "opt_in_level", "consent_updated_at", "consent_collected_from",
        }  # fmt: skip


def test_checkouts_gain_contact_details_on_update_and_link_to_their_order(
    store: SimulatedStore, parsed: list[tuple[str, JSON]]
) -> None:
    for checkout in of_topic(parsed, "checkouts/create"):
        assert checkout["email"] is None and checkout["phone"] is None and "customer" not in checkout
        assert checkout["completed_at"] is None
    cart_tokens = {cart["token"] for cart in store.carts}
    assert all(cart["id"] == cart["token"] for cart in store.carts)
    by_token = {checkout["token"]: checkout for checkout in store.checkouts}
    for checkout in store.checkouts:
        assert checkout["cart_token"] in cart_tokens
        assert checkout["abandoned_checkout_url"].startswith(
            f"https://{SHOP}/checkouts/ac/{checkout['cart_token']}/recover?key="
        )
    for order in store.orders:
        checkout = by_token[order["checkout_token"]]
        assert (checkout["id"], checkout["cart_token"]) == (order["checkout_id"], order["cart_token"])
        assert checkout["completed_at"] is not None
        assert shop_time(checkout["completed_at"]) <= shop_time(order["created_at"])
        assert checkout["total_price"] == order["total_price"]
        assert checkout["email"] == order["email"]
        assert (checkout.get("customer") or {}).get("id") == (order["customer"] or {}).get("id")


def test_each_purchase_follows_shopifys_webhook_sequence(parsed: list[tuple[str, JSON]]) -> None:
    topics_by_order: dict[int, list[str]] = defaultdict(list)
    for topic, payload in parsed:
        if topic in ORDER_TOPICS:
            topics_by_order[payload["id"]].append(topic)
        elif topic == "refunds/create":
            topics_by_order[payload["order_id"]].append(topic)
    for topics in topics_by_order.values():
        assert topics[0] == "orders/create"
        assert topics.count("orders/create") == 1 and topics.count("orders/paid") <= 1
        if "orders/fulfilled" in topics:
            assert topics.index("orders/paid") < topics.index("orders/fulfilled")
        for index, topic in enumerate(topics):
            if topic in ("orders/fulfilled", "orders/cancelled", "refunds/create"):
                assert "orders/updated" in topics[index + 1 :]
    assert sum("orders/fulfilled" in t for t in topics_by_order.values()) > 0.8 * len(topics_by_order)


def test_cancelled_orders_say_when_and_why(store: SimulatedStore, parsed: list[tuple[str, JSON]]) -> None:
    cancelled = [o for o in store.orders if o["cancelled_at"] is not None]
    assert cancelled
    for order in cancelled:
        assert order["cancel_reason"] in {"customer", "inventory", "fraud", "declined", "other"}
        assert order["financial_status"] in {"voided", "refunded"}
        assert order["fulfillment_status"] is None and order["closed_at"] == order["cancelled_at"]
    assert {o["id"] for o in of_topic(parsed, "orders/cancelled")} == {o["id"] for o in cancelled}
    assert {o["financial_status"] for o in store.orders} == {
        "paid", "partially_refunded", "refunded", "voided",
    } | ({"pending"} & {o["financial_status"] for o in store.orders})  # fmt: skip


def test_products_look_like_a_real_catalogue(store: SimulatedStore, parsed: list[tuple[str, JSON]]) -> None:
    assert {p["product_type"] for p in store.products} == {"Coffee", "Tea", "Mugs", "Apparel", "Accessories"}
    assert 3 <= len({p["vendor"] for p in store.products}) <= 6
    for product in store.products:
        assert product["status"] == "active"
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", product["handle"])
        assert product["tags"] and product["images"]
        assert all(image["src"].startswith("https://cdn.example.com/") for image in product["images"])
        for variant in product["variants"]:
            assert MONEY.match(variant["price"]) and variant["sku"] and variant["product_id"] == product["id"]
    assert of_topic(parsed, "products/update")
    for topic, _payload in parsed[: len(store.products)]:
        assert topic == "products/create", "the catalogue exists before anyone shops"


def test_carts_grow_by_updates_before_checkout(parsed: list[tuple[str, JSON]]) -> None:
    created = of_topic(parsed, "carts/create")
    updated = of_topic(parsed, "carts/update")
    assert created and updated
    for cart in created + updated:
        assert cart["id"] == cart["token"] and cart["line_items"]
        for item in cart["line_items"]:
            assert Decimal(item["line_price"]) == Decimal(item["price"]) * item["quantity"]


# -- property: any seed, any small store --------------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(min_value=0, max_value=10_000),
    customers=st.integers(min_value=0, max_value=25),
    guests=st.integers(min_value=0, max_value=6),
    foreign=st.sampled_from([0.0, 0.5, 1.0]),
)
def test_any_small_store_adds_up(seed: int, customers: int, guests: int, foreign: float) -> None:
    size = StoreSize(customers=customers, guests=guests, products=6, foreign_currency_share=foreign,
                     cancel_share=0.2, refund_share=0.3)  # fmt: skip
    store = SimulatedStore(size=size, seed=seed, start=START)
    for order in store.orders:
        assert_order_adds_up(order)
        assert amount(order["current_total_price_set"]) == amount(order["total_price_set"]) - refunded(order)
    expected = store.expected()
    counted = [o for o in store.orders if not o["test"] and o["cancelled_at"] is None]
    assert expected.counted_orders == len(counted)
    assert expected.revenue == sum((amount(o["total_price_set"]) - refunded(o) for o in counted), Decimal(0))


# -- many_orders ----------------------------------------------------------------------------------------


def test_many_orders_streams_full_size_orders_with_unique_event_ids() -> None:
    assert inspect.isgenerator(many_orders(SHOP, 1200, seed=3, customers=300))
    sizes, event_ids, emails = [], set(), set()
    for delivery in many_orders(SHOP, 1200, seed=3, customers=300):
        assert delivery.topic == "orders/create"
        order = parse(delivery.body)
        assert_order_adds_up(order)
        assert len(order["line_items"]) >= 1 and order["customer"]["email"] == order["email"]
        sizes.append(len(delivery.body))
        event_ids.add(delivery.event_id)
        emails.add(order["email"])
    assert len(sizes) == 1200 == len(event_ids)
    assert min(sizes) >= 6_000 and max(sizes) <= 9_000
    assert 7_000 <= sum(sizes) / len(sizes) <= 8_500
    assert 200 < len(emails) <= 300
    assert list(many_orders(SHOP, 5, seed=3)) == list(many_orders(SHOP, 5, seed=3))


def test_many_orders_runs_in_constant_memory() -> None:
    def peak_while_consuming(n: int) -> int:
        tracemalloc.start()
        try:
            total = sum(len(d.body) for d in many_orders(SHOP, n, seed=5))
            assert total > n * 6_000
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_while_consuming(40), peak_while_consuming(320)
    assert large < small * 1.5 + 200_000, (small, large)


# -- sending --------------------------------------------------------------------------------------------


def _verified(request: httpx.Request) -> bool:
    expected = sign_webhook(request.content, SECRET)
    return hmac.compare_digest(request.headers["X-Shopify-Hmac-Sha256"], expected)


def test_the_sender_retries_a_failed_delivery_as_the_same_event_and_stops_on_success(
    deliveries: list[WebhookDelivery],
) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert _verified(request)
        return httpx.Response(500 if len(seen) == 1 else 200)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    sender = WebhookSender(
        "http://connector.test/", shop_domain=SHOP, secret=SECRET, client=client, retry_delay=0
    )
    response = sender.send_with_retries(deliveries[0])
    assert response.status_code == 200 and len(seen) == 2
    assert str(seen[0].url) == "http://connector.test/webhooks/shopify"
    assert (
        seen[0].headers["X-Shopify-Event-Id"]
        == seen[1].headers["X-Shopify-Event-Id"]
        == deliveries[0].event_id
    )
    assert seen[0].headers["X-Shopify-Webhook-Id"] != seen[1].headers["X-Shopify-Webhook-Id"]
    assert seen[0].headers["X-Shopify-Topic"] == deliveries[0].topic
    assert seen[0].headers["Content-Type"] == "application/json"
    assert seen[0].content == seen[1].content == deliveries[0].body


def test_the_sender_gives_up_after_three_retries_and_survives_connection_errors(
    deliveries: list[WebhookDelivery],
) -> None:
    calls = Counter[str]()

    def handler(request: httpx.Request) -> httpx.Response:
        event = request.headers["X-Shopify-Event-Id"]
        calls[event] += 1
        if event == deliveries[0].event_id:
            return httpx.Response(503)
        if calls[event] == 1:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(200)

    sent: list[tuple[str, int]] = []
    with WebhookSender(
        "http://connector.test", shop_domain=SHOP, secret=SECRET, retry_delay=0,
        client=httpx.Client(transport=httpx.MockTransport(handler)),
    ) as sender:  # fmt: skip
        responses = sender.send_all(
            deliveries[:3], on_sent=lambda d, r: sent.append((d.event_id, r.status_code))
        )
    assert [r.status_code for r in responses] == [503, 200, 200]
    assert calls[deliveries[0].event_id] == 4
    assert calls[deliveries[1].event_id] == calls[deliveries[2].event_id] == 2
    assert sent == [(d.event_id, r.status_code) for d, r in zip(deliveries[:3], responses, strict=True)]


def test_send_posts_once_without_retrying(deliveries: list[WebhookDelivery]) -> None:
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(500)

    client = httpx.Client(transport=httpx.MockTransport(handler))
    sender = WebhookSender(
        "http://connector.test", shop_domain=SHOP, secret=SECRET, client=client, path="/hooks"
    )
    assert sender.send(deliveries[1]).status_code == 500
    assert len(calls) == 1 and calls[0].url.path == "/hooks" and _verified(calls[0])
