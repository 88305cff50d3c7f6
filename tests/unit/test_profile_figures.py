"""The enriched figures of a buyer, computed by hand: cadence, prediction, favourites, shares, subscriptions."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from mappings.profile import LineFacts, OrderFacts, ProductFacts, build_profile
from mappings.shopify import birthday_from, subscription_signals

DAY0 = datetime(2026, 1, 1, tzinfo=UTC)
PRODUCTS = {
    1: ProductFacts(title="Espresso beans", url="https://s/products/espresso", image_url="https://i/1.jpg",
                    product_type="Coffee", vendor="Roastery"),
    2: ProductFacts(title="Grinder", url="https://s/products/grinder", image_url="https://i/2.jpg",
                    product_type="Equipment", vendor="Gearco"),
    3: ProductFacts(title="Old mug", url="https://s/products/mug", image_url="https://i/3.jpg",
                    product_type="Merch", vendor="Roastery", deleted=True),
}


def _order(order_id: int, day: float, total: str, *lines: LineFacts, refunded: str = "0", rebill: bool = False,
           discounted: bool = False, cancelled: bool = False, test: bool = False,
           subscription: bool = False) -> OrderFacts:
    created = DAY0 + timedelta(days=day)
    return OrderFacts(order_id=order_id, name=f"#{order_id}", created_at=created,
                      cancelled_at=created if cancelled else None, test=test, total=Decimal(total),
                      refunded=Decimal(refunded), currency="USD", lines=lines, discounted=discounted,
                      rebill=rebill, subscription=subscription or rebill)


def _line(product_id: int | None, quantity: int = 1, *, refunded: int = 0, title: str | None = None,
          vendor: str | None = None) -> LineFacts:
    return LineFacts(product_id=product_id, title=title or (PRODUCTS[product_id].title if product_id in PRODUCTS
                                                            else "Custom item"),
                     vendor=vendor, quantity=quantity, refunded_quantity=refunded, price=Decimal("10"))


def test_cadence_is_the_span_of_own_orders_divided_by_the_gaps_and_predicts_the_next() -> None:
    orders = [_order(1, 0, "30", _line(1)), _order(2, 10, "30", _line(1)), _order(3, 25, "30", _line(1))]
    profile = build_profile(orders, "USD", products=PRODUCTS)
    # (day 25 - day 0) / 2 gaps = 12.5 days; next = day 25 + 12.5 = 2026-01-38 -> 2026-02-07 12:00
    assert profile.days_between_orders == Decimal("12.5")
    assert profile.predicted_next_order_at == DAY0 + timedelta(days=37.5)
    assert profile.cadence_source == "own cadence"


def test_one_order_predicts_with_the_shop_median_and_no_median_means_no_prediction() -> None:
    one = [_order(1, 3, "30", _line(1))]
    assert build_profile(one, "USD", shop_median_days=Decimal("20")).predicted_next_order_at == \
        DAY0 + timedelta(days=23)
    assert build_profile(one, "USD", shop_median_days=Decimal("20")).days_between_orders is None
    assert build_profile(one, "USD").predicted_next_order_at is None


def test_subscription_renewals_count_in_totals_but_not_in_the_cadence() -> None:
    orders = [_order(1, 0, "20", _line(1), subscription=True), _order(2, 30, "20", _line(1), rebill=True),
              _order(3, 60, "20", _line(1), rebill=True), _order(4, 40, "50", _line(2))]
    profile = build_profile(orders, "USD", products=PRODUCTS)
    assert profile.order_count == 4 and profile.total_spent == Decimal("110.00")
    assert profile.days_between_orders == Decimal("40.0")  # own orders: day 0 and day 40
    assert profile.subscription_buyer is True and profile.rebill_count == 2


def test_favourites_weigh_units_kept_and_refunded_units_do_not_count() -> None:
    orders = [
        _order(1, 0, "40", _line(1, 2), _line(2, 3, refunded=3)),  # grinders all returned
        _order(2, 5, "10", _line(2, 1)),
    ]
    profile = build_profile(orders, "USD", products=PRODUCTS)
    assert profile.favorite_category == "Coffee"  # 2 coffee units kept vs 1 equipment
    assert profile.favorite_vendor == "Roastery"
    assert profile.categories == ("Coffee", "Equipment")


def test_a_tie_goes_to_the_category_bought_last() -> None:
    orders = [_order(1, 0, "10", _line(1)), _order(2, 9, "10", _line(2))]
    assert build_profile(orders, "USD", products=PRODUCTS).favorite_category == "Equipment"


def test_the_favourite_category_falls_back_to_collections_when_no_product_type_is_known() -> None:
    products = {9: ProductFacts(title="Gift box", url=None, image_url=None, collections=("Gifts", "Holiday"))}
    orders = [_order(1, 0, "10", _line(9, 2)), _order(2, 1, "10", _line(None))]
    profile = build_profile(orders, "USD", products=products)
    assert profile.favorite_category == "Gifts" and profile.categories == ()


def test_the_last_product_of_a_deleted_product_keeps_its_title_but_no_link() -> None:
    profile = build_profile([_order(1, 0, "10", _line(1)), _order(2, 4, "10", _line(3))], "USD",
                            products=PRODUCTS)
    assert profile.last_product is not None
    assert (profile.last_product.title, profile.last_product.url, profile.last_product.image_url) == \
        ("Old mug", None, None)


def test_a_line_without_product_is_shown_by_its_own_title() -> None:
    profile = build_profile([_order(1, 0, "10", _line(None, title="Gift wrap"))], "USD", products=PRODUCTS)
    assert profile.last_product is not None and profile.last_product.title == "Gift wrap"
    assert profile.favorite_category is None


def test_discount_share_is_the_share_of_counted_orders_with_a_discount() -> None:
    orders = [_order(1, 0, "10", discounted=True), _order(2, 1, "10"), _order(3, 2, "10", discounted=True),
              _order(4, 3, "10", discounted=True, cancelled=True)]
    assert build_profile(orders, "USD").discount_share == Decimal("0.67")  # 2 of 3 counted


def test_fully_refunded_test_and_cancelled_orders_are_not_purchases_but_zero_value_orders_are() -> None:
    orders = [_order(1, 0, "25", refunded="25"), _order(2, 1, "0"), _order(3, 2, "30", test=True),
              _order(4, 3, "30", cancelled=True)]
    profile = build_profile(orders, "USD")
    assert profile.order_count == 1 and profile.total_spent == Decimal("0.00")
    assert profile.average_order_value == Decimal("0.00")
    assert "not counted: 1 (fully refunded), 3 (test), 4 (cancelled)" in profile.explanation


def test_test_orders_count_when_the_shop_says_so() -> None:
    assert build_profile([_order(1, 0, "30", test=True)], "USD", count_test_orders=True).order_count == 1


def test_no_orders_divides_by_nothing() -> None:
    profile = build_profile([], "USD")
    assert (profile.order_count, profile.average_order_value, profile.discount_share) == \
        (0, Decimal("0.00"), Decimal("0.00"))
    assert profile.days_between_orders is None and profile.predicted_next_order_at is None


@given(st.lists(st.tuples(st.integers(0, 400), st.integers(0, 500), st.integers(0, 3), st.booleans(),
                          st.booleans()), min_size=1, max_size=12), st.randoms())
def test_figures_do_not_depend_on_the_order_in_which_orders_arrived(
        specs: list[tuple[int, int, int, bool, bool]], rng: random.Random) -> None:
    orders = [_order(i + 1, day, str(total), _line(1 + product % 3, 1 + product), rebill=rebill, discounted=disc)
              for i, (day, total, product, rebill, disc) in enumerate(specs)]
    shuffled = orders[:]
    rng.shuffle(shuffled)
    assert build_profile(orders, "USD", products=PRODUCTS, shop_median_days=Decimal("30")) == \
        build_profile(shuffled, "USD", products=PRODUCTS, shop_median_days=Decimal("30"))


def test_a_birthday_is_read_from_the_note_or_tags_in_iso_form_only() -> None:
    assert birthday_from("VIP. Birthday: 1990-05-12, prefers decaf", "") == "1990-05-12"
    assert birthday_from(None, ["wholesale", "birthday:--02-29"]) == "--02-29"
    assert birthday_from("dob 07-04", None) == "--07-04"
    assert birthday_from("birthday: 12/05/1990", None) is None  # day/month order unknown: not guessed
    assert birthday_from("birthday: 1990-02-30", None) is None
    assert birthday_from("Prefers decaf", "") is None


def test_subscription_signals_tell_a_renewal_from_a_first_subscription_order() -> None:
    assert subscription_signals("subscription_contract", None, []) == (True, True)
    assert subscription_signals("web", "Subscription Recurring Order, vip", []) == (True, True)
    assert subscription_signals("web", "Subscription First Order", []) == (False, True)
    assert subscription_signals("web", None, [{"selling_plan_allocation": {"selling_plan": {"id": 1}}}]) == \
        (False, True)
    assert subscription_signals("web", "gift", [{"selling_plan_allocation": None}]) == (False, False)
