"""Profile figures and the Brevo contact body, computed by hand."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from mappings.profile import (
    BuyerFacts,
    ConsentSent,
    OpenCart,
    OrderFacts,
    brevo_attributes,
    build_profile,
    consent_fields,
    contact_body,
)


def _order(order_id: int, day: int, total: str, refunded: str = "0", *, cancelled: bool = False,
           test: bool = False) -> OrderFacts:
    return OrderFacts(order_id=order_id, name=f"#{1000 + order_id}", created_at=datetime(2026, 3, day, tzinfo=UTC),
                      cancelled_at=datetime(2026, 3, day + 1, tzinfo=UTC) if cancelled else None, test=test,
                      total=Decimal(total), refunded=Decimal(refunded), currency="USD")


BUYER = BuyerFacts(contact_key="c:1", customer_id=1, email="ana@example.com", phone="+14155550123",
                   first_name="Ana", last_name="Silva", email_opted_out=False, sms_opted_out=None,
                   shop_currency="USD")


def test_total_spent_is_net_of_refunds_and_skips_cancelled_and_test_orders() -> None:
    orders = [_order(1, 1, "100.00", "30.00"), _order(2, 5, "50.00"), _order(3, 7, "999.00", cancelled=True),
              _order(4, 9, "10.00", test=True)]
    profile = build_profile(orders, "USD")
    assert profile.order_count == 2
    assert profile.total_spent == Decimal("120.00")
    assert profile.average_order_value == Decimal("60.00")
    assert profile.first_order_at == datetime(2026, 3, 1, tzinfo=UTC)
    assert profile.last_order_at == datetime(2026, 3, 5, tzinfo=UTC)
    assert profile.last_order_name == "#1002"


def test_attributes_carry_the_product_contract_names() -> None:
    profile = build_profile([_order(1, 2, "19.99")], "USD")
    attributes = brevo_attributes(BUYER, profile, OpenCart(url="https://x.example/recover", value=Decimal("5"),
                                                           currency="USD"))
    assert attributes == {
        "FIRSTNAME": "Ana", "LASTNAME": "Silva", "SMS": "+14155550123", "SHOPIFY_CUSTOMER_ID": "1",
        "ORDER_COUNT": 1, "TOTAL_SPENT": Decimal("19.99"), "AVERAGE_ORDER_VALUE": Decimal("19.99"),
        "FIRST_ORDER_DATE": "2026-03-02", "LAST_ORDER_DATE": "2026-03-02", "LAST_ORDER_NUMBER": "#1001",
        "CURRENCY": "USD", "CART_URL": "https://x.example/recover", "CART_VALUE": Decimal("5.00"),
        "AVERAGE_DAYS_BETWEEN_ORDERS": "", "PREDICTED_NEXT_ORDER_DATE": "", "FAVORITE_CATEGORY": "",
        "FAVORITE_VENDOR": "", "LAST_PRODUCT_TITLE": "", "LAST_PRODUCT_URL": "", "LAST_PRODUCT_IMAGE": "",
        "CATEGORIES_PURCHASED": [], "DISCOUNT_SHARE": Decimal("0.00"), "SUBSCRIPTION_BUYER": False,
        "CUSTOMER_TAGS": "", "COUNTRY": "", "CITY": "", "LANGUAGE": "", "RFM_SCORE": "", "RFM_SEGMENT": "",
    }
    body = contact_body(BUYER, attributes, {})
    assert body["email"] == "ana@example.com"
    assert body["ext_id"] == "gid://shopify/Customer/1"
    assert body["attributes"]["TOTAL_SPENT"] == 19.99


def test_a_buyer_without_orders_or_cart_has_cleared_values() -> None:
    attributes = brevo_attributes(BUYER, build_profile([], "USD"), None)
    assert attributes["ORDER_COUNT"] == 0 and attributes["CART_URL"] == "" and attributes["LAST_ORDER_DATE"] == ""


def test_an_opt_out_in_shopify_is_forwarded_once() -> None:
    opted_out = BuyerFacts(**{**BUYER.__dict__, "email_opted_out": True})
    assert consent_fields(opted_out, ConsentSent(), ConsentSent()) == {"emailBlacklisted": True}
    assert consent_fields(opted_out, ConsentSent(email_blacklisted=True),
                          ConsentSent(email_blacklisted=True)) == {}


def test_a_subscribed_buyer_is_never_resubscribed_on_our_initiative() -> None:
    # Shopify says subscribed and always did: an unsubscribe made in Brevo must stand.
    assert consent_fields(BUYER, ConsentSent(email_blacklisted=False), ConsentSent()) == {}
    assert consent_fields(BUYER, ConsentSent(), ConsentSent()) == {}


def test_a_resubscription_made_in_shopify_is_forwarded() -> None:
    assert consent_fields(BUYER, ConsentSent(email_blacklisted=True),
                          ConsentSent(email_blacklisted=True)) == {"emailBlacklisted": False}


amounts = st.decimals(min_value=Decimal("0"), max_value=Decimal("5000"), places=2)


@given(st.lists(st.tuples(amounts, amounts, st.booleans(), st.booleans()), max_size=12), st.randoms())
def test_figures_do_not_depend_on_the_order_in_which_orders_arrive(rows: list[tuple[Decimal, Decimal, bool, bool]],
                                                                   rnd: object) -> None:
    orders = [_order(i + 1, (i % 27) + 1, str(total), str(min(refund, total)), cancelled=cancelled, test=test)
              for i, (total, refund, cancelled, test) in enumerate(rows)]
    shuffled = list(orders)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert build_profile(orders, "USD") == build_profile(shuffled, "USD")
    profile = build_profile(orders, "USD")
    assert profile.total_spent >= 0
    assert profile.total_spent == sum((o.net for o in orders if o.counts), Decimal("0"))
