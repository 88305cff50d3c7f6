"""A buyer's enriched profile from their mirrored orders, and the Brevo contact body that carries it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
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
}


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

    @property
    def counts(self) -> bool:
        """Cancelled and test orders are not purchases."""
        return self.cancelled_at is None and not self.test

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


@dataclass(frozen=True, kw_only=True)
class Profile:
    order_count: int
    total_spent: Decimal
    average_order_value: Decimal
    first_order_at: datetime | None
    last_order_at: datetime | None
    last_order_name: str | None
    currency: str | None


def build_profile(orders: Sequence[OrderFacts], shop_currency: str | None) -> Profile:
    counted = sorted((o for o in orders if o.counts), key=lambda o: (o.created_at is None, o.created_at, o.order_id))
    total = sum((o.net for o in counted), Decimal("0")).quantize(CENT, ROUND_HALF_UP)
    count = len(counted)
    dated = [o for o in counted if o.created_at is not None]
    last = dated[-1] if dated else (counted[-1] if counted else None)
    currency = shop_currency or next((o.currency for o in orders if o.currency), None)
    return Profile(
        order_count=count,
        total_spent=total,
        average_order_value=(total / count).quantize(CENT, ROUND_HALF_UP) if count else Decimal("0.00"),
        first_order_at=dated[0].created_at if dated else None,
        last_order_at=last.created_at if last else None,
        last_order_name=last.name if last else None,
        currency=currency,
    )


def _date(value: datetime | None) -> str:
    return value.date().isoformat() if value else ""


def brevo_attributes(buyer: BuyerFacts, profile: Profile, cart: OpenCart | None) -> dict[str, Any]:
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
