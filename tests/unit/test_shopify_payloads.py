"""Shopify's real sample payloads map to mirror records; malformed payloads fail with the field named."""

from __future__ import annotations

import pickle
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from mappings.shopify import (
    CartRecord,
    CheckoutRecord,
    ConsentRecord,
    CustomerRecord,
    OrderRecord,
    PayloadError,
    ProductRecord,
    RefundRecord,
)
from tests.conftest import fixture_payload


def test_order_sample_maps_shop_money_and_exact_ids() -> None:
    order = OrderRecord.from_payload(fixture_payload("orders_create__triggerdev.json"))
    # The JSON id was rounded past 2**53 by the tool that saved the sample; the GID is exact.
    assert order.order_id == 820982911946154508
    assert order.customer_id == 115310627314723954
    assert order.total == Decimal("388.00")
    assert order.currency == "USD"
    assert order.test is True
    assert order.cancelled_at == datetime(2022, 1, 1, 0, 0, tzinfo=UTC)
    assert [line.title for line in order.lines] == ["IPod Nano - 8GB", "IPod Nano - 8GB"]
    assert all(isinstance(line.price, Decimal) for line in order.lines)
    assert order.contact_key == "c:115310627314723954"


def test_an_amount_read_again_is_the_same_object_and_keeps_its_exact_value() -> None:
    """Equal amounts are one object, so that a chunk of history pickles each once; each keeps its own digits."""
    first = OrderRecord.from_payload({"id": 1, "email": "a@example.com", "total_price": "19.90",
                                      "line_items": [{"id": 1, "price": "19.90", "quantity": 1}]})
    second = OrderRecord.from_payload({"id": 2, "email": "b@example.com", "total_price": "19.90",
                                       "line_items": [{"id": 2, "price": "19.9", "quantity": 1}]})
    assert first.total is second.total is first.lines[0].price
    assert str(second.lines[0].price) == "19.9" and second.lines[0].price == first.total
    chunk = pickle.loads(pickle.dumps([first, second]))
    assert chunk[0].total is chunk[1].total and chunk[1].total == Decimal("19.90")
    # Only amounts are remembered: text that is not one is refused each time it is read
    for _ in range(2):
        with pytest.raises(PayloadError, match="total_price"):
            OrderRecord.from_payload({"id": 3, "total_price": "19.90.1"})


def test_customer_sample_maps_identity_and_names() -> None:
    customer = CustomerRecord.from_payload(fixture_payload("customers_create__triggerdev.json"))
    assert customer.customer_id == 706405506930370084
    assert customer.email == "bob@biller.com"
    assert (customer.first_name, customer.last_name) == ("Bob", "Biller")
    assert customer.contact_key == "c:706405506930370084"
    assert customer.email_consent is None  # since API 2025-01 consent arrives on its own topics


def test_customer_embedded_in_an_order_keeps_its_email_consent() -> None:
    order = OrderRecord.from_payload(fixture_payload("orders_create__triggerdev.json"))
    assert order.customer is not None and order.customer.email_consent is not None
    assert order.customer.email_consent.state == "not_subscribed"


def test_refund_sample_amount_is_the_money_returned_in_shop_currency() -> None:
    refund = RefundRecord.from_payload(fixture_payload("refunds_create__triggerdev.json"), shop_currency="USD")
    assert refund.refund_id == 890088186047892319
    assert refund.amount > 0
    assert len(refund.lines) == 2


def test_refund_in_foreign_currency_uses_shop_money_not_presentment_transactions() -> None:
    payload = {
        "id": 1, "order_id": 2, "created_at": "2026-01-05T10:00:00+01:00",
        "refund_line_items": [{"line_item_id": 9, "quantity": 1,
                               "subtotal_set": {"shop_money": {"amount": "10.00", "currency_code": "USD"},
                                                "presentment_money": {"amount": "9.20", "currency_code": "EUR"}},
                               "total_tax_set": {"shop_money": {"amount": "1.00", "currency_code": "USD"},
                                                 "presentment_money": {"amount": "0.92", "currency_code": "EUR"}}}],
        "transactions": [{"kind": "refund", "status": "success", "amount": "10.12", "currency": "EUR"}],
    }
    assert RefundRecord.from_payload(payload, shop_currency="USD").amount == Decimal("11.00")


def test_product_sample_maps_type_vendor_and_handle() -> None:
    product = ProductRecord.from_payload(fixture_payload("products_create__triggerdev.json"))
    assert (product.product_type, product.vendor, product.handle) == ("Shirts", "Acme", "example-t-shirt")


def test_checkout_sample_links_cart_and_customer() -> None:
    checkout = CheckoutRecord.from_payload(fixture_payload("checkouts_create__triggerdev.json"))
    assert checkout.cart_token == "eeafa272cebfd4b22385bc4b645e762c"
    assert checkout.customer_id == 603851970716743426
    assert checkout.recovery_url and "recover" in checkout.recovery_url
    assert checkout.completed_at is None


def test_real_cart_update_payload_totals_its_lines() -> None:
    cart = CartRecord.from_payload(fixture_payload("carts_update__shopifysharp.json"))
    assert cart.token.startswith("c1-")
    assert cart.total == sum((Decimal(str(li["price"])) * li["quantity"] for li in cart.lines), Decimal("0"))


def test_consent_topic_with_null_state_says_nothing() -> None:
    payload = fixture_payload("customers_email_marketing_consent_update__triggerdev.json")
    consent = ConsentRecord.from_email_topic(payload)
    assert consent.state == ""


@pytest.mark.parametrize(("field", "value", "message"), [
    ("updated_at", "yesterday", "updated_at"),
    ("total_price", 12.5, "total_price"),
    ("total_price", "twelve", "total_price"),
    ("line_items", "not a list", "line_items"),
    ("id", 3.0, "id"),
])
def test_malformed_order_fails_naming_the_field(field: str, value: object, message: str) -> None:
    payload = fixture_payload("orders_create__triggerdev.json")
    payload.pop("total_price_set")
    if field == "id":
        payload.pop("admin_graphql_api_id")
    payload[field] = value
    with pytest.raises(PayloadError, match=message):
        OrderRecord.from_payload(payload)


def test_a_birthday_comes_from_the_standard_metafield_before_the_note() -> None:
    payload = {"id": 7, "email": "b@example.com", "note": "birthday: 1985-01-02", "birth_date": "1990-05-12"}
    assert CustomerRecord.from_payload(payload).birthday == "1990-05-12"
    assert CustomerRecord.from_payload({**payload, "birth_date": None}).birthday == "1985-01-02"
    with pytest.raises(PayloadError, match="'birth_date' is not a date"):
        CustomerRecord.from_payload({**payload, "birth_date": "12/05/1990"})
