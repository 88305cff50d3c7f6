"""When each lifecycle trigger falls due, computed by hand; the scan window that emits each once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from types import SimpleNamespace
from typing import cast

from mappings.lifecycle import (
    CheckoutFacts,
    abandoned_cart,
    birthdays,
    due_between,
    moments_for,
    next_due,
    replenishments,
    review_requests,
    winback,
)
from mappings.profile import BuyerFacts, LineFacts, OrderFacts, ProductFacts, build_profile
from mappings.shop_config import LifecycleSettings
from sync.profiles import BuyerView, ShopContext, for_settling

DAY0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
DELAYS = LifecycleSettings()
PRODUCTS = {5: ProductFacts(title="Beans", url="https://s/products/beans", image_url="https://i/5.jpg"),
            6: ProductFacts(title="Filter", url="https://s/products/filter", image_url=None, deleted=True)}


def _order(order_id: int, day: float, *lines: LineFacts, refunded: str = "0", fulfilled_day: float | None = None,
           cancelled: bool = False, rebill: bool = False, total: str = "20") -> OrderFacts:
    created = DAY0 + timedelta(days=day)
    return OrderFacts(order_id=order_id, name=f"#{order_id}", created_at=created,
                      cancelled_at=created if cancelled else None, test=False, total=Decimal(total),
                      refunded=Decimal(refunded), currency="USD", lines=lines, rebill=rebill,
                      fulfilled_at=DAY0 + timedelta(days=fulfilled_day) if fulfilled_day is not None else None)


def _line(product_id: int, quantity: int = 1, refunded: int = 0) -> LineFacts:
    return LineFacts(product_id=product_id, title=f"P{product_id}", vendor=None, quantity=quantity,
                     refunded_quantity=refunded, price=Decimal("10"))


def test_winback_waits_for_the_longer_of_twice_the_cadence_and_the_shop_delay() -> None:
    frequent = build_profile([_order(1, 0, _line(5)), _order(2, 10, _line(5))], "USD")  # cadence 10 days
    moment = winback("c:1", frequent, DELAYS)
    assert moment is not None and moment.due_at == DAY0 + timedelta(days=10 + 60)  # max(20, 60)
    rare = build_profile([_order(1, 0, _line(5)), _order(2, 45, _line(5))], "USD")  # cadence 45 days
    moment = winback("c:1", rare, DELAYS)
    assert moment is not None and moment.due_at == DAY0 + timedelta(days=45 + 90)  # max(90, 60)
    assert moment.key == "winback_due:c:1:2"


def test_no_winback_without_a_counted_order() -> None:
    assert winback("c:1", build_profile([_order(1, 0, cancelled=True)], "USD"), DELAYS) is None


def test_replenishment_uses_the_products_own_interval_and_skips_renewals_and_deleted_products() -> None:
    orders = [_order(1, 0, _line(5), _line(6)), _order(2, 14, _line(5), _line(6)), _order(3, 30, _line(5)),
              _order(4, 35, _line(5), rebill=True)]
    [moment] = replenishments("c:1", orders, PRODUCTS)  # product 6 is deleted: nothing to buy again
    assert moment.properties["interval_days"] == "15.0"  # day 0 -> day 30 over 2 gaps; the renewal is ignored
    assert moment.due_at == DAY0 + timedelta(days=45)
    assert moment.key == "replenishment_due:c:1:5:3"
    assert moment.properties["item"]["url"] == "https://s/products/beans"


def test_a_product_bought_once_or_twice_the_same_day_has_no_interval() -> None:
    assert replenishments("c:1", [_order(1, 0, _line(5))], PRODUCTS) == []
    assert replenishments("c:1", [_order(1, 0, _line(5)), _order(2, 0, _line(5))], PRODUCTS) == []


def test_a_review_is_requested_after_fulfilment_without_the_refunded_items() -> None:
    orders = [_order(1, 0, _line(5), _line(6, 2, refunded=2), fulfilled_day=2),
              _order(2, 1, _line(5), fulfilled_day=3, refunded="20"),  # refunded whole
              _order(3, 2, _line(5), fulfilled_day=3, cancelled=True),
              _order(4, 3, _line(5))]  # not fulfilled
    [moment] = review_requests(orders, PRODUCTS, DELAYS)
    assert moment.due_at == DAY0 + timedelta(days=2 + 7)
    assert [item["product_id"] for item in moment.properties["items"]] == ["5"]


def test_an_abandoned_cart_is_due_the_shops_delay_after_the_last_change() -> None:
    checkout = CheckoutFacts(checkout_id=9, cart_id="tok", updated_at=DAY0, items=({"title": "Beans"},),
                             subtotal="10.00", total="12.00", currency="USD", recovery_url="https://r")
    moment = abandoned_cart(checkout, LifecycleSettings(abandoned_cart_minutes=45))
    assert moment is not None and moment.due_at == DAY0 + timedelta(minutes=45)
    empty = CheckoutFacts(checkout_id=9, cart_id="tok", updated_at=DAY0, items=(), subtotal="0", total="0",
                          currency="USD", recovery_url="")
    assert abandoned_cart(empty, DELAYS) is None


def test_a_leap_day_birthday_is_celebrated_on_the_28th_in_common_years() -> None:
    moments = birthdays("c:1", "1992-02-29", datetime(2027, 6, 1, tzinfo=UTC))
    assert [m.due_at.date().isoformat() for m in moments] == ["2026-02-28", "2027-02-28", "2028-02-29"]
    assert [m.properties["age"] for m in moments] == [34, 35, 36]
    assert "age" not in birthdays("c:1", "--02-29", DAY0)[0].properties


def test_each_moment_is_emitted_by_exactly_one_scan_window() -> None:
    profile = build_profile([_order(1, 0, _line(5), fulfilled_day=1)], "USD")
    moments = moments_for("c:1", profile=profile, orders=[_order(1, 0, _line(5), fulfilled_day=1)],
                          products=PRODUCTS, checkout=None, birthday="--03-20", delays=DELAYS, now=DAY0)
    scans = [DAY0 + timedelta(days=d) for d in (0, 3, 8, 8, 30, 61, 400)]
    emitted = [m.key for a, b in zip(scans, scans[1:], strict=False) for m in due_between(moments, a, b)]
    assert sorted(emitted) == sorted(m.key for m in moments if scans[0] < m.due_at <= scans[-1])
    assert len(emitted) == len(set(emitted))
    assert next_due(moments, DAY0) == DAY0 + timedelta(days=8)  # the review request: fulfilled day 1 + 7


def test_a_view_slimmed_for_settling_emits_the_same_moments_and_is_next_due_at_the_same_time() -> None:
    orders = [_order(1, 0, _line(5), fulfilled_day=1), _order(2, 40, _line(5), fulfilled_day=41)]
    profile = build_profile(orders, "USD")
    moments = moments_for("c:1", profile=profile, orders=orders, products=PRODUCTS, checkout=None,
                          birthday="--03-20", delays=DELAYS, now=DAY0)
    view = BuyerView(buyer=cast(BuyerFacts, None), orders=tuple(orders), products=PRODUCTS, profile=profile,
                     rfm=None, attributes={}, moments=tuple(moments))
    for day in (8, 48, 59, 100, 400):  # builds at different times: each with moments behind it and ahead
        shop = cast(ShopContext, SimpleNamespace(now=DAY0 + timedelta(days=day), freshness=timedelta(hours=24)))
        slim = for_settling(view, shop)
        assert slim.orders == () and slim.products == {} and len(slim.moments) < len(moments)
        # What `_settle` reads: the moments due since the later of its last scan and the window's start, and the
        # next one due after the scan.
        for after in (shop.now - shop.freshness, shop.now - timedelta(hours=3), shop.now):
            assert due_between(slim.moments, after, shop.now) == due_between(moments, after, shop.now)
        for scanned in (shop.now, shop.now + timedelta(days=2)):
            assert next_due(slim.moments, scanned) == next_due(moments, scanned)
