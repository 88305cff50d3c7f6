"""Lifecycle moments: when a buyer's win-back, replenishment, review request, abandoned cart and birthday fall due.

Pure: the profile builder passes a buyer's mirrored orders, products and open cart, and emits the moments
whose due time has passed since it last looked (and not before the connector first knew the buyer, so
history never fires a trigger). Each moment carries its natural key; the outbox sends a key once.

Rules (the README's "Lifecycle triggers" table says the same in the merchant's words):
- winback_due: no counted order for max(2 x the buyer's own cadence, the shop's win-back delay) after the
  last one; key = last order id, so each silence is announced once.
- replenishment_due: per product bought in two or more orders (renewals left out), one of that product's
  own repurchase intervals (first to last purchase / (purchases - 1)) after its last purchase.
- review_request_due: the shop's review delay after an order's first fulfilment; the items refunded since
  are left out, and an order cancelled or refunded whole asks for no review.
- cart_abandoned: the shop's abandonment delay after the buyer's open checkout last changed, while no
  order completed it (an order completing it later sends cart_recovered instead, see sync.apply).
- birthday: each year on the birthday (UTC), from the customer note or tags; 29 February is celebrated on
  28 February in common years.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mappings.events import money_text
from mappings.profile import DAY_SECONDS, TENTH, OrderFacts, ProductFacts, Profile
from mappings.shop_config import LifecycleSettings

WINBACK_DUE = "winback_due"
REPLENISHMENT_DUE = "replenishment_due"
REVIEW_REQUEST_DUE = "review_request_due"
CART_ABANDONED = "cart_abandoned"
BIRTHDAY = "birthday"


@dataclass(frozen=True, kw_only=True)
class CheckoutFacts:
    checkout_id: int
    cart_id: str
    updated_at: datetime
    items: tuple[dict[str, Any], ...]  # already shaped as event items
    subtotal: str
    total: str
    currency: str
    recovery_url: str


@dataclass(frozen=True, kw_only=True)
class Moment:
    name: str
    key: str  # natural key, without the shop prefix
    due_at: datetime
    properties: dict[str, Any] = field(default_factory=dict)


def _item(line_title: str | None, product_id: int | None, price: Decimal, quantity: int,
          products: Mapping[int, ProductFacts]) -> dict[str, Any]:
    info = products.get(product_id) if product_id else None
    live = info is not None and not info.deleted
    return {"product_id": str(product_id or ""), "title": line_title or (info.title if info else "") or "",
            "quantity": quantity, "price": money_text(price), "url": (info.url if live and info else None) or "",
            "image": (info.image_url if live and info else None) or ""}


def winback(contact_key: str, profile: Profile, delays: LifecycleSettings) -> Moment | None:
    if not profile.order_count or profile.last_order_at is None or profile.last_order_id is None:
        return None
    own = profile.days_between_orders
    wait_days = max(own * 2 if own is not None else Decimal(0), Decimal(delays.winback_days))
    due = profile.last_order_at + timedelta(seconds=float(wait_days * DAY_SECONDS))
    props = {"last_order_date": profile.last_order_at.date().isoformat(),
             "last_order_name": profile.last_order_name or "", "order_count": profile.order_count,
             "total_spent": money_text(profile.total_spent), "days_waited": int(wait_days),
             "last_product_title": (profile.last_product.title or "") if profile.last_product else "",
             "last_product_url": (profile.last_product.url or "") if profile.last_product else "",
             "last_product_image": (profile.last_product.image_url or "") if profile.last_product else ""}
    return Moment(name=WINBACK_DUE, key=f"{WINBACK_DUE}:{contact_key}:{profile.last_order_id}", due_at=due,
                  properties=props)


def replenishments(contact_key: str, orders: Sequence[OrderFacts],
                   products: Mapping[int, ProductFacts]) -> list[Moment]:
    purchases: dict[int, list[tuple[datetime, int, Decimal, str | None]]] = {}
    for order in orders:
        if not order.counts or order.rebill or order.created_at is None:
            continue
        seen: set[int] = set()
        for line in order.lines:
            if line.product_id is None or line.kept <= 0 or line.product_id in seen:
                continue
            seen.add(line.product_id)
            purchases.setdefault(line.product_id, []).append((order.created_at, order.order_id, line.price,
                                                              line.title))
    moments = []
    for product_id, bought in sorted(purchases.items()):
        if len(bought) < 2:
            continue
        bought.sort()
        first, last = bought[0][0], bought[-1][0]
        interval = (Decimal((last - first).total_seconds()) / DAY_SECONDS / (len(bought) - 1)).quantize(
            TENTH, ROUND_HALF_UP)
        if interval <= 0:
            continue  # bought twice the same day: no interval to learn from
        _, last_order_id, price, title = bought[-1]
        info = products.get(product_id)
        if info is not None and info.deleted:
            continue  # nothing to buy again
        props = {"product_id": str(product_id), "interval_days": str(interval),
                 "last_purchased_at": last.date().isoformat(), "times_bought": len(bought),
                 "item": _item(title, product_id, price, 1, products)}
        moments.append(Moment(name=REPLENISHMENT_DUE,
                              key=f"{REPLENISHMENT_DUE}:{contact_key}:{product_id}:{last_order_id}",
                              due_at=last + timedelta(seconds=float(interval * DAY_SECONDS)), properties=props))
    return moments


def review_requests(orders: Sequence[OrderFacts], products: Mapping[int, ProductFacts],
                    delays: LifecycleSettings) -> list[Moment]:
    moments = []
    for order in orders:
        if not order.counts or order.fulfilled_at is None:
            continue
        items = [_item(li.title, li.product_id, li.price, li.kept, products) for li in order.lines if li.kept > 0]
        if not items:
            continue  # everything was refunded: asking for a review would be tone-deaf
        props = {"order_id": str(order.order_id), "order_name": order.name or "", "items": items,
                 "fulfilled_at": order.fulfilled_at.isoformat()}
        moments.append(Moment(name=REVIEW_REQUEST_DUE, key=f"{REVIEW_REQUEST_DUE}:{order.order_id}",
                              due_at=order.fulfilled_at + timedelta(days=delays.review_request_days),
                              properties=props))
    return moments


def abandoned_cart(checkout: CheckoutFacts | None, delays: LifecycleSettings) -> Moment | None:
    if checkout is None or not checkout.items:
        return None
    props = {"cart_id": checkout.cart_id, "checkout_id": str(checkout.checkout_id), "items": list(checkout.items),
             "subtotal": checkout.subtotal, "total": checkout.total, "currency": checkout.currency,
             "recovery_url": checkout.recovery_url}
    return Moment(name=CART_ABANDONED, key=f"{CART_ABANDONED}:{checkout.checkout_id}",
                  due_at=checkout.updated_at + timedelta(minutes=delays.abandoned_cart_minutes), properties=props)


def birthdays(contact_key: str, birthday: str | None, now: datetime) -> list[Moment]:
    """Last year's, this year's and next year's birthday: enough for any window around `now`."""
    if not birthday:
        return []
    month, day = int(birthday[-5:-3]), int(birthday[-2:])
    moments = []
    for year in (now.year - 1, now.year, now.year + 1):
        leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
        d = 28 if (month, day) == (2, 29) and not leap else day
        props: dict[str, Any] = {"birthday": f"{month:02d}-{day:02d}"}
        if not birthday.startswith("--"):
            props["age"] = year - int(birthday[:4])
        moments.append(Moment(name=BIRTHDAY, key=f"{BIRTHDAY}:{contact_key}:{year}",
                              due_at=datetime(year, month, d, tzinfo=UTC), properties=props))
    return moments


def moments_for(contact_key: str, *, profile: Profile, orders: Sequence[OrderFacts],
                products: Mapping[int, ProductFacts], checkout: CheckoutFacts | None, birthday: str | None,
                delays: LifecycleSettings, now: datetime) -> list[Moment]:
    found: list[Moment] = []
    for single in (winback(contact_key, profile, delays), abandoned_cart(checkout, delays)):
        if single is not None:
            found.append(single)
    found += replenishments(contact_key, orders, products)
    found += review_requests(orders, products, delays)
    found += birthdays(contact_key, birthday, now)
    return found


def due_between(moments: Sequence[Moment], after: datetime, until: datetime) -> list[Moment]:
    """The moments that fell due in (after, until]: what a scan at `until` must emit."""
    return [m for m in moments if after < m.due_at <= until]


def next_due(moments: Sequence[Moment], after: datetime) -> datetime | None:
    return min((m.due_at for m in moments if m.due_at > after), default=None)
