"""A buyer's enriched profile from their mirrored orders, and the Brevo contact body that carries it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from mappings.identity import customer_gid

CENT = Decimal("0.01")

# Attributes the connector creates in a Brevo account when a shop connects (name -> Brevo type).
# FIRSTNAME, LASTNAME and SMS are Brevo's own and always exist.
BREVO_ATTRIBUTES: dict[str, str] = {
    "SHOPIFY_CUSTOMER_ID": "text",
    "ORDER_COUNT": "float",
    "TOTAL_SPENT": "float",
    "AVERAGE_ORDER_VALUE": "float",
    "FIRST_ORDER_DATE": "date",
    "LAST_ORDER_DATE": "date",
    "LAST_ORDER_NUMBER": "text",
    "CURRENCY": "text",
    "CART_URL": "text",
    "CART_VALUE": "float",
    "AVERAGE_DAYS_BETWEEN_ORDERS": "float",
    "PREDICTED_NEXT_ORDER_DATE": "date",
    "FAVORITE_CATEGORY": "text",
    "FAVORITE_VENDOR": "text",
    "LAST_PRODUCT_TITLE": "text",
    "LAST_PRODUCT_URL": "text",
    "LAST_PRODUCT_IMAGE": "text",
    "CATEGORIES_PURCHASED": "multiple-choice",
    "DISCOUNT_SHARE": "float",
    "SUBSCRIPTION_BUYER": "boolean",
    "CUSTOMER_TAGS": "text",
    "COUNTRY": "text",
    "CITY": "text",
    "LANGUAGE": "text",
    "RFM_SCORE": "text",
    "RFM_SEGMENT": "text",
    "LOYALTY_POINTS": "float",
    "LOYALTY_TIER": "text",
    "LOYALTY_NEXT_TIER": "text",
    "LOYALTY_POINTS_TO_NEXT_TIER": "float",
    "LOYALTY_POINTS_EXPIRE_AT": "date",
    "LOYALTY_REWARD_CODE": "text",
}
MULTIPLE_CHOICE_ATTRIBUTES = frozenset(n for n, t in BREVO_ATTRIBUTES.items() if t == "multiple-choice")
DAY_SECONDS = Decimal(86400)
TENTH = Decimal("0.1")


@dataclass(frozen=True, kw_only=True)
class LineFacts:
    product_id: int | None
    title: str | None
    vendor: str | None
    quantity: int
    refunded_quantity: int = 0
    price: Decimal = Decimal("0")

    @property
    def kept(self) -> int:
        """Units the buyer kept: refunded units are not purchases."""
        return max(self.quantity - self.refunded_quantity, 0)


@dataclass(frozen=True, kw_only=True)
class ProductFacts:
    title: str | None
    url: str | None
    image_url: str | None
    product_type: str | None = None
    vendor: str | None = None
    collections: tuple[str, ...] = ()
    deleted: bool = False


@dataclass(frozen=True, kw_only=True)
class OrderFacts:
    order_id: int
    name: str | None
    created_at: datetime | None
    cancelled_at: datetime | None
    test: bool
    total: Decimal  # shop currency
    refunded: Decimal  # shop currency, sum of its refunds
    currency: str | None
    lines: tuple[LineFacts, ...] = ()
    discounted: bool = False
    subscription: bool = False
    rebill: bool = False
    fulfilled_at: datetime | None = None

    @property
    def fully_refunded(self) -> bool:
        return self.total > 0 and self.refunded >= self.total

    @property
    def counts(self) -> bool:
        """Cancelled, test and fully refunded orders are not purchases (a zero-value order is one)."""
        return self.cancelled_at is None and not self.test and not self.fully_refunded

    @property
    def net(self) -> Decimal:
        return max(self.total - self.refunded, Decimal("0"))


@dataclass(frozen=True, kw_only=True)
class OpenCart:
    url: str | None
    value: Decimal
    currency: str | None


@dataclass(frozen=True, kw_only=True)
class BuyerFacts:
    contact_key: str
    customer_id: int | None
    email: str | None
    phone: str | None  # E.164 or None
    first_name: str | None
    last_name: str | None
    email_opted_out: bool | None  # None: Shopify has not told us
    sms_opted_out: bool | None
    shop_currency: str | None
    sms_subscribed: bool = False  # Shopify's SMS consent is "subscribed"
    tags: str | None = None
    country_code: str | None = None
    city: str | None = None
    locale: str | None = None

    @property
    def can_be_marketed(self) -> bool:
        """Marketing triggers (abandoned cart, win-back, ...) need consent on the channel that reaches them:
        email unless Shopify says they opted out; a phone-only buyer only with SMS consent."""
        if self.email:
            return self.email_opted_out is not True
        return bool(self.phone) and self.sms_subscribed and self.sms_opted_out is not True


@dataclass(frozen=True, kw_only=True)
class LastProduct:
    title: str | None
    url: str | None
    image_url: str | None


@dataclass(frozen=True, kw_only=True)
class Profile:
    order_count: int
    total_spent: Decimal
    average_order_value: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    last_order_name: str | None
    currency: str | None
    last_order_id: int | None = None
    days_between_orders: Decimal | None = None  # the buyer's own cadence, rebills left out
    predicted_next_order_at: datetime | None = None
    cadence_source: str | None = None  # "own cadence" | "shop median" | None
    favorite_category: str | None = None
    favorite_vendor: str | None = None
    last_product: LastProduct | None = None
    categories: tuple[str, ...] = ()
    discount_share: Decimal = Decimal("0.00")
    subscription_buyer: bool = False
    rebill_count: int = 0
    explanation: tuple[str, ...] = ()


def _favorite(weights: Mapping[str, tuple[int, datetime | None]]) -> str | None:
    """Most units bought; a tie goes to the most recently bought, then to the name (stable)."""
    if not weights:
        return None
    floor = datetime.min.replace(tzinfo=UTC)
    return min(weights, key=lambda k: (-weights[k][0], -(weights[k][1] or floor).timestamp(), k))


def _days(a: datetime, b: datetime) -> Decimal:
    return Decimal((b - a).total_seconds()) / DAY_SECONDS


def build_profile(orders: Sequence[OrderFacts], shop_currency: str | None, *,
                  products: Mapping[int, ProductFacts] | None = None, shop_median_days: Decimal | None = None,
                  count_test_orders: bool = False) -> Profile:
    """Every figure of one buyer, from their orders alone; the result does not depend on their order."""
    products = products or {}
    counted = sorted((o for o in orders if o.counts or (count_test_orders and o.test and o.cancelled_at is None
                                                        and not o.fully_refunded)),
                     key=lambda o: (o.created_at is None, o.created_at, o.order_id))
    total = sum((o.net for o in counted), Decimal("0")).quantize(CENT, ROUND_HALF_UP)
    count = len(counted)
    dated = [o for o in counted if o.created_at is not None]
    last = dated[-1] if dated else (counted[-1] if counted else None)
    currency = shop_currency or next((o.currency for o in orders if o.currency), None)
    notes = [f"{count} order(s) counted of {len(orders)} known"]
    skipped = [(o.order_id, "cancelled" if o.cancelled_at else "test" if o.test else "fully refunded")
               for o in orders if o not in counted]
    if skipped:
        notes.append("not counted: " + ", ".join(f"{oid} ({why})" for oid, why in sorted(skipped)))
    refunds = sum((o.refunded for o in counted), Decimal("0")).quantize(CENT, ROUND_HALF_UP)
    totals = sum((o.total for o in counted), Decimal("0")).quantize(CENT, ROUND_HALF_UP)
    notes.append(f"total spent {total} = order totals {totals} - refunds {refunds} (shop currency {currency or '?'})")

    # Cadence from the buyer's own choices: subscription renewals would only echo the plan's interval.
    own = [o for o in dated if not o.rebill]
    days_between = None
    predicted = None
    source = None
    if len(own) >= 2:
        assert own[0].created_at and own[-1].created_at
        days_between = (_days(own[0].created_at, own[-1].created_at) / (len(own) - 1)).quantize(TENTH, ROUND_HALF_UP)
        source = "own cadence"
        notes.append(f"cadence {days_between} days = span of {len(own)} own orders / {len(own) - 1}")
    elif len(own) == 1 and shop_median_days is not None:
        days_between, source = None, "shop median"
        notes.append(f"one own order: next order predicted with the shop median cadence {shop_median_days} days")
    cadence = days_between if days_between is not None else (shop_median_days if own else None)
    if own and cadence is not None and own[-1].created_at is not None:
        predicted = own[-1].created_at + timedelta(seconds=float(cadence * DAY_SECONDS))
    rebills = sum(1 for o in counted if o.rebill)
    if rebills:
        notes.append(f"{rebills} subscription renewal(s) counted in totals, left out of the cadence")

    categories: dict[str, tuple[int, datetime | None]] = {}
    collections: dict[str, tuple[int, datetime | None]] = {}
    vendors: dict[str, tuple[int, datetime | None]] = {}
    for order in counted:
        for line in order.lines:
            if line.kept <= 0:
                continue
            info = products.get(line.product_id) if line.product_id else None
            for bucket, name in ((categories, info.product_type if info else None),
                                 (vendors, line.vendor or (info.vendor if info else None)),
                                 *((collections, c) for c in (info.collections if info else ()))):
                if name:
                    units, seen = bucket.get(name, (0, None))
                    bucket[name] = (units + line.kept, max(filter(None, (seen, order.created_at)), default=None))
    favorite_category = _favorite(categories) or _favorite(collections)
    last_product = None
    if last is not None:
        shown = next((li for li in last.lines if li.kept > 0), last.lines[0] if last.lines else None)
        if shown is not None:
            info = products.get(shown.product_id) if shown.product_id else None
            live = info is not None and not info.deleted
            last_product = LastProduct(title=shown.title or (info.title if info else None),
                                       url=info.url if live and info else None,
                                       image_url=info.image_url if live and info else None)
    discounted = sum(1 for o in counted if o.discounted)
    share = (Decimal(discounted) / count).quantize(CENT, ROUND_HALF_UP) if count else Decimal("0.00")
    return Profile(
        order_count=count,
        total_spent=total,
        average_order_value=(total / count).quantize(CENT, ROUND_HALF_UP) if count else Decimal("0.00"),
        first_order_at=dated[0].created_at if dated else None,
        last_order_at=last.created_at if last else None,
        last_order_name=last.name if last else None,
        currency=currency,
        last_order_id=last.order_id if last else None,
        days_between_orders=days_between,
        predicted_next_order_at=predicted,
        cadence_source=source if predicted else None,
        favorite_category=favorite_category,
        favorite_vendor=_favorite(vendors),
        last_product=last_product,
        categories=tuple(sorted(categories)),
        discount_share=share,
        subscription_buyer=any(o.subscription for o in counted),
        rebill_count=rebills,
        explanation=tuple(notes),
    )


def _date(value: datetime | None) -> str:
    return value.date().isoformat() if value else ""


def brevo_attributes(buyer: BuyerFacts, profile: Profile, cart: OpenCart | None,
                     rfm: tuple[str, str] | None = None) -> dict[str, Any]:
    """The attribute set Brevo should hold for this buyer. Empty strings clear a value in Brevo."""
    attributes: dict[str, Any] = {
        "FIRSTNAME": buyer.first_name or "",
        "LASTNAME": buyer.last_name or "",
        "SHOPIFY_CUSTOMER_ID": str(buyer.customer_id) if buyer.customer_id else "",
        "ORDER_COUNT": profile.order_count,
        "TOTAL_SPENT": profile.total_spent,
        "AVERAGE_ORDER_VALUE": profile.average_order_value,
        "FIRST_ORDER_DATE": _date(profile.first_order_at),
        "LAST_ORDER_DATE": _date(profile.last_order_at),
        "LAST_ORDER_NUMBER": profile.last_order_name or "",
        "CURRENCY": profile.currency or "",
        "CART_URL": (cart.url or "") if cart else "",
        "CART_VALUE": cart.value.quantize(CENT, ROUND_HALF_UP) if cart else Decimal("0.00"),
        "AVERAGE_DAYS_BETWEEN_ORDERS": profile.days_between_orders if profile.days_between_orders is not None
        else "",
        "PREDICTED_NEXT_ORDER_DATE": _date(profile.predicted_next_order_at),
        "FAVORITE_CATEGORY": profile.favorite_category or "",
        "FAVORITE_VENDOR": profile.favorite_vendor or "",
        "LAST_PRODUCT_TITLE": (profile.last_product.title or "") if profile.last_product else "",
        "LAST_PRODUCT_URL": (profile.last_product.url or "") if profile.last_product else "",
        "LAST_PRODUCT_IMAGE": (profile.last_product.image_url or "") if profile.last_product else "",
        "CATEGORIES_PURCHASED": list(profile.categories),
        "DISCOUNT_SHARE": profile.discount_share,
        "SUBSCRIPTION_BUYER": profile.subscription_buyer,
        "CUSTOMER_TAGS": buyer.tags or "",
        "COUNTRY": buyer.country_code or "",
        "CITY": buyer.city or "",
        "LANGUAGE": buyer.locale or "",
        "RFM_SCORE": rfm[0] if rfm else "",
        "RFM_SEGMENT": rfm[1] if rfm else "",
    }
    if buyer.phone:
        attributes["SMS"] = buyer.phone
    return attributes


@dataclass(frozen=True, kw_only=True)
class ConsentSent:
    """What the connector last told Brevo about a buyer's consent (None: never said anything)."""

    email_blacklisted: bool | None = None
    sms_blacklisted: bool | None = None


def consent_fields(buyer: BuyerFacts, previous_shopify: ConsentSent, sent: ConsentSent) -> dict[str, bool]:
    """Blacklist flags to send: only on a Shopify change, and never re-subscribing on our own initiative.

    An opt-out in Shopify is always forwarded. An opt-in is forwarded only when Shopify itself moved the
    buyer from opted-out to subscribed (a re-subscription the buyer made in Shopify), never because a
    new contact is "subscribed" - so an unsubscribe done in Brevo is never undone by us.
    """
    fields: dict[str, bool] = {}
    for channel, now, before, told in (
        ("emailBlacklisted", buyer.email_opted_out, previous_shopify.email_blacklisted, sent.email_blacklisted),
        ("smsBlacklisted", buyer.sms_opted_out, previous_shopify.sms_blacklisted, sent.sms_blacklisted),
    ):
        if now is True and told is not True:
            fields[channel] = True
        elif now is False and before is True and told is True:
            fields[channel] = False
    return fields


def contact_body(buyer: BuyerFacts, attributes: Mapping[str, Any], consent: Mapping[str, bool]) -> dict[str, Any]:
    """The JSON-able Brevo contact (email identifier, ext_id = customer GID, attributes, consent)."""
    body: dict[str, Any] = {"attributes": {k: jsonable(v) for k, v in attributes.items()}}
    if buyer.email:
        body["email"] = buyer.email
    if buyer.customer_id:
        body["ext_id"] = customer_gid(buyer.customer_id)
    body.update(consent)
    return body


def jsonable(value: Any) -> Any:
    """Money leaves as a JSON number: a 2-decimal amount round-trips exactly through a float's shortest repr."""
    if isinstance(value, Decimal):
        return float(value)
    return value


def body_hash(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
