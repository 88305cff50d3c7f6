"""Domain facts -> Brevo events: which behavioural events a Shopify change produces, and their bodies."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from mappings.identity import customer_gid
from mappings.shopify import CheckoutRecord, LineRecord, OrderRecord, RefundRecord

# The event names are a product contract: merchants build Brevo automations on them.
CUSTOMER_CREATED = "customer_created"
CART_UPDATED = "cart_updated"
CHECKOUT_STARTED = "checkout_started"
ORDER_COMPLETED = "order_completed"
ORDER_FULFILLED = "order_fulfilled"
ORDER_CANCELLED = "order_cancelled"
ORDER_REFUNDED = "order_refunded"
FIRST_ORDER_COMPLETED = "first_order_completed"
REPEAT_ORDER_COMPLETED = "repeat_order_completed"
CART_RECOVERED = "cart_recovered"


@dataclass(frozen=True, kw_only=True)
class ProductInfo:
    title: str | None
    url: str | None
    image_url: str | None


@dataclass(frozen=True, kw_only=True)
class Buyer:
    contact_key: str
    customer_id: int | None
    email: str | None
    phone: str | None

    def identifiers(self) -> dict[str, str]:
        # One identifier only: two that Brevo resolves to different contacts would be ambiguous.
        if self.email:
            return {"email_id": self.email}
        if self.phone:
            return {"phone_id": self.phone}
        if self.customer_id:
            return {"ext_id": customer_gid(self.customer_id)}
        raise ValueError("a buyer without email, phone or customer id cannot receive events")


@dataclass(frozen=True, kw_only=True)
class EventFact:
    """An event to send once: `key` is its idempotency key, built from Shopify ids only."""

    name: str
    key: str
    contact_key: str
    occurred_at: datetime | None
    body: dict[str, Any] | str  # or its JSON text, made ahead (history's orders: `sync.apply.prepare`)
    target: str = "event"  # event: Brevo /events | order: Brevo /orders/status (ecommerce)


def money_text(amount: Decimal) -> str:
    # Brevo's event schema allows strings and integers, not fractional numbers: amounts travel as text.
    return str(amount.quantize(Decimal("0.01")))


def _event(name: str, key: str, buyer: Buyer, occurred_at: datetime | None,
           properties: Mapping[str, Any]) -> EventFact:
    body: dict[str, Any] = {"event_name": name, "identifiers": buyer.identifiers(),
                            "event_properties": dict(properties)}
    if occurred_at is not None:
        body["event_date"] = occurred_at.isoformat()
    return EventFact(name=name, key=key, contact_key=buyer.contact_key, occurred_at=occurred_at, body=body)


def product_url(shop_domain: str, handle: str | None) -> str | None:
    return f"https://{shop_domain}/products/{handle}" if handle else None


def order_items(lines: Sequence[LineRecord], products: Mapping[int, ProductInfo]) -> list[dict[str, Any]]:
    items = []
    for line in lines:
        info = products.get(line.product_id) if line.product_id else None
        item: dict[str, Any] = {
            "product_id": str(line.product_id) if line.product_id else "",
            "variant_id": str(line.variant_id) if line.variant_id else "",
            "title": line.title or (info.title if info else "") or "",
            "quantity": line.quantity,
            "price": money_text(line.price),
            "url": (info.url if info else None) or "",
            "image": (info.image_url if info else None) or "",
        }
        if line.variant_title:
            item["variant"] = line.variant_title
        items.append(item)
    return items


def cart_items(lines: Sequence[Mapping[str, Any]], products: Mapping[int, ProductInfo]) -> list[dict[str, Any]]:
    items = []
    for line in lines:
        pid = line.get("product_id")
        info = products.get(pid) if pid else None
        items.append({
            "product_id": str(pid) if pid else "",
            "variant_id": str(line["variant_id"]) if line.get("variant_id") else "",
            "title": line.get("title") or (info.title if info else "") or "",
            "quantity": int(line.get("quantity") or 0),
            "price": money_text(Decimal(str(line.get("price") or "0"))),
            "url": (info.url if info else None) or "",
            "image": (info.image_url if info else None) or "",
        })
    return items


def _order_properties(order: OrderRecord, products: Mapping[int, ProductInfo]) -> dict[str, Any]:
    props: dict[str, Any] = {
        "order_id": str(order.order_id),
        "order_name": order.name or "",
        "items": order_items(order.lines, products),
        "subtotal": money_text(order.subtotal),
        "discounts": money_text(order.total_discounts),
        "tax": money_text(order.total_tax),
        "shipping": money_text(order.total_shipping),
        "total": money_text(order.total),
        "currency": order.currency or "",
    }
    if order.discount_codes:
        props["discount_codes"] = list(order.discount_codes)
    if order.order_status_url:
        props["order_status_url"] = order.order_status_url
    return props


def order_events(order: OrderRecord, buyer: Buyer, products: Mapping[int, ProductInfo],
                 shop: str) -> list[EventFact]:
    """Events that the order's current state implies; the outbox keeps each key once."""
    if order.test:
        return []
    props = _order_properties(order, products)
    oid = order.order_id
    events = [_event(ORDER_COMPLETED, f"{shop}:{ORDER_COMPLETED}:{oid}", buyer, order.created_at, props)]
    if order.fulfillment_status == "fulfilled":
        events.append(_event(ORDER_FULFILLED, f"{shop}:{ORDER_FULFILLED}:{oid}", buyer,
                             order.updated_at, props))
    if order.cancelled_at is not None:
        events.append(_event(ORDER_CANCELLED, f"{shop}:{ORDER_CANCELLED}:{oid}", buyer, order.cancelled_at,
                             {**props, "cancelled_at": order.cancelled_at.isoformat()}))
    summary = OrderSummary(name=order.name, currency=order.currency, total=order.total, test=order.test,
                           lines=order.lines)
    for refund in order.refunds:
        events.extend(refund_events(refund, summary, buyer, products, shop))
    return events


@dataclass(frozen=True, kw_only=True)
class OrderSummary:
    """What a refund event tells about its order."""

    name: str | None
    currency: str | None
    total: Decimal
    test: bool
    lines: tuple[LineRecord, ...]


def refund_events(refund: RefundRecord, order: OrderSummary | None, buyer: Buyer,
                  products: Mapping[int, ProductInfo], shop: str) -> list[EventFact]:
    if order is not None and order.test:
        return []
    props: dict[str, Any] = {"refund_id": str(refund.refund_id), "order_id": str(refund.order_id),
                             "refunded_amount": money_text(refund.amount)}
    if order is not None:
        by_line = {line.line_id: line for line in order.lines}
        refunded_lines = [by_line[lid] for lid, _ in refund.lines if lid in by_line]
        qty = dict(refund.lines)
        items = order_items(refunded_lines, products)
        for item, line in zip(items, refunded_lines, strict=True):
            item["quantity"] = qty[line.line_id]
        props.update({"order_name": order.name or "", "items": items, "currency": order.currency or "",
                      "order_total": money_text(order.total)})
    return [_event(ORDER_REFUNDED, f"{shop}:{ORDER_REFUNDED}:{refund.refund_id}", buyer, refund.created_at, props)]


def purchase_sequence_event(order: OrderRecord, buyer: Buyer, products: Mapping[int, ProductInfo], shop: str,
                            earlier_orders: int) -> EventFact:
    """first_order_completed or repeat_order_completed, once per order, with the buyer's order number."""
    name = FIRST_ORDER_COMPLETED if earlier_orders == 0 else REPEAT_ORDER_COMPLETED
    props = {**_order_properties(order, products), "order_sequence": earlier_orders + 1}
    # One key for both names: an order is announced first or repeat once, whatever arrives later.
    return _event(name, f"{shop}:order_sequence:{order.order_id}", buyer, order.created_at, props)


def cart_recovered_event(checkout_id: int, cart_id: str | None, order: OrderRecord, buyer: Buyer,
                         shop: str) -> EventFact:
    props = {"checkout_id": str(checkout_id), "cart_id": cart_id or str(checkout_id), "order_id": str(order.order_id),
             "order_name": order.name or "", "total": money_text(order.total), "currency": order.currency or ""}
    return _event(CART_RECOVERED, f"{shop}:{CART_RECOVERED}:{checkout_id}", buyer, order.created_at, props)


def lifecycle_event(name: str, key: str, buyer: Buyer, occurred_at: datetime | None,
                    properties: Mapping[str, Any]) -> EventFact:
    """A trigger the connector itself decided on (a moment fell due, a segment changed)."""
    return _event(name, key, buyer, occurred_at, properties)


def customer_created_event(buyer: Buyer, created_at: datetime | None, shop: str) -> EventFact:
    assert buyer.customer_id is not None
    return _event(CUSTOMER_CREATED, f"{shop}:{CUSTOMER_CREATED}:{buyer.customer_id}", buyer, created_at,
                  {"customer_id": str(buyer.customer_id)})


def lines_fingerprint(lines: Sequence[Mapping[str, Any]]) -> str:
    canonical = sorted((str(li.get("variant_id") or li.get("product_id")), int(li.get("quantity") or 0),
                        str(li.get("price"))) for li in lines)
    return hashlib.sha256(json.dumps(canonical).encode()).hexdigest()[:16]


def checkout_events(checkout: CheckoutRecord, buyer: Buyer, products: Mapping[int, ProductInfo],
                    shop: str) -> list[EventFact]:
    """checkout_started once per checkout; cart_updated once per distinct cart content."""
    if checkout.completed_at is not None or not checkout.lines:
        return []
    cart_id = checkout.cart_token or checkout.token or str(checkout.checkout_id)
    props: dict[str, Any] = {
        "cart_id": cart_id,
        "checkout_id": str(checkout.checkout_id),
        "items": cart_items(checkout.lines, products),
        "subtotal": money_text(checkout.subtotal),
        "total": money_text(checkout.total),
        "currency": checkout.currency or "",
        "recovery_url": checkout.recovery_url or "",
    }
    return [
        _event(CHECKOUT_STARTED, f"{shop}:{CHECKOUT_STARTED}:{checkout.checkout_id}", buyer,
               checkout.created_at or checkout.updated_at, props),
        _event(CART_UPDATED, f"{shop}:{CART_UPDATED}:{cart_id}:{lines_fingerprint(checkout.lines)}", buyer,
               checkout.updated_at, props),
    ]


def cart_updated_event(cart_token: str, lines: Sequence[Mapping[str, Any]], total: Decimal, currency: str | None,
                       recovery_url: str | None, updated_at: datetime | None, buyer: Buyer,
                       products: Mapping[int, ProductInfo], shop: str) -> EventFact | None:
    if not lines:
        return None
    props = {"cart_id": cart_token, "items": cart_items(lines, products), "total": money_text(total),
             "currency": currency or "", "recovery_url": recovery_url or ""}
    return _event(CART_UPDATED, f"{shop}:{CART_UPDATED}:{cart_token}:{lines_fingerprint(lines)}", buyer,
                  updated_at, props)
