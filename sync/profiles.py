"""The profile builder: a dirty contact's mirror rows -> the Brevo contact body; unchanged hash -> nothing to send."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.models import Cart, Checkout, Contact, Customer, Order, Refund
from mappings.profile import (
    BuyerFacts,
    ConsentSent,
    OpenCart,
    OrderFacts,
    body_hash,
    brevo_attributes,
    build_profile,
    consent_fields,
    contact_body,
)

OPTED_OUT = {"unsubscribed", "redacted", "invalid"}


def _opted_out(state: str | None) -> bool | None:
    if state is None:
        return None
    return state in OPTED_OUT


def build_dirty_contacts(session: Session, shop_id: int, shop_currency: str | None, *, limit: int = 500) -> int:
    """Recompute up to `limit` dirty contacts of one shop; returns how many were looked at."""
    contacts: Sequence[Contact] = session.execute(
        sa.select(Contact).where(col(Contact.shop_id) == shop_id, col(Contact.dirty).is_(True))
        .limit(limit)).scalars().all()
    if not contacts:
        return 0
    keys = [c.contact_key for c in contacts]
    customer_ids = [c.customer_id for c in contacts if c.customer_id]
    customers = {c.customer_id: c for c in session.execute(
        sa.select(Customer).where(col(Customer.shop_id) == shop_id,
                                  col(Customer.customer_id).in_(customer_ids))).scalars()} if customer_ids else {}
    orders: dict[str, list[Order]] = defaultdict(list)
    for order in session.execute(sa.select(Order).where(col(Order.shop_id) == shop_id,
                                                        col(Order.contact_key).in_(keys))).scalars():
        orders[order.contact_key or ""].append(order)
    order_ids = [o.order_id for os in orders.values() for o in os]
    refunded: dict[int, Decimal] = defaultdict(Decimal)
    for start in range(0, len(order_ids), 900):
        for refund in session.execute(sa.select(col(Refund.order_id), col(Refund.amount)).where(
                col(Refund.shop_id) == shop_id, col(Refund.order_id).in_(order_ids[start:start + 900]))):
            refunded[refund.order_id] += refund.amount
    carts = _open_carts(session, shop_id, keys)
    for contact in contacts:
        customer = customers.get(contact.customer_id) if contact.customer_id else None
        facts = [OrderFacts(order_id=o.order_id, name=o.name, created_at=as_utc(o.created_at_src),
                            cancelled_at=o.cancelled_at, test=o.test, total=o.total,
                            refunded=refunded.get(o.order_id, Decimal("0")), currency=o.currency)
                 for o in orders.get(contact.contact_key, [])]
        first_order = min(orders.get(contact.contact_key, []), key=lambda o: o.order_id, default=None)
        buyer = BuyerFacts(
            contact_key=contact.contact_key,
            customer_id=contact.customer_id,
            email=(customer.email if customer else None) or contact.email,
            phone=(customer.phone if customer else None) or contact.phone,
            first_name=(customer.first_name if customer else None) or contact.first_name,
            last_name=(customer.last_name if customer else None) or contact.last_name,
            email_opted_out=_opted_out(customer.email_consent) if customer else None,
            sms_opted_out=_opted_out(customer.sms_consent) if customer else None,
            shop_currency=shop_currency or (first_order.currency if first_order else None),
        )
        profile = build_profile(facts, buyer.shop_currency)
        attributes = brevo_attributes(buyer, profile, carts.get(contact.contact_key))
        memory = dict(contact.sent.get("_consent", {})) if contact.sent else {}
        seen = ConsentSent(email_blacklisted=memory.get("shopify_email"), sms_blacklisted=memory.get("shopify_sms"))
        told = ConsentSent(email_blacklisted=memory.get("told_email"), sms_blacklisted=memory.get("told_sms"))
        body = contact_body(buyer, attributes, consent_fields(buyer, seen, told))
        contact.dirty = False
        contact.email, contact.phone = buyer.email, buyer.phone
        if not (buyer.email or buyer.phone):
            continue  # Brevo needs an email or a phone number to hold a contact
        digest = body_hash(body)
        consent_memory = {"shopify_email": buyer.email_opted_out, "shopify_sms": buyer.sms_opted_out,
                          "told_email": body.get("emailBlacklisted", told.email_blacklisted),
                          "told_sms": body.get("smsBlacklisted", told.sms_blacklisted)}
        if digest == contact.sent_hash or digest == contact.pending_hash:
            continue
        body["_consent"] = consent_memory
        contact.pending, contact.pending_hash = body, digest
        contact.push_state, contact.attempts, contact.next_attempt_at = "pending", 0, None
    return len(contacts)


def _open_carts(session: Session, shop_id: int, keys: Sequence[str]) -> dict[str, OpenCart]:
    """The newest checkout of each buyer that no order completed, valued at its cart's latest content."""
    newest: dict[str, Checkout] = {}
    for checkout in session.execute(sa.select(Checkout).where(
            col(Checkout.shop_id) == shop_id, col(Checkout.contact_key).in_(keys),
            col(Checkout.completed_at).is_(None))).scalars():
        key = checkout.contact_key or ""
        current = newest.get(key)
        if current is None or _later(checkout.updated_at_src, current.updated_at_src):
            newest[key] = checkout
    tokens = [c.cart_token for c in newest.values() if c.cart_token]
    carts = {c.token: c for c in session.execute(sa.select(Cart).where(
        col(Cart.shop_id) == shop_id, col(Cart.token).in_(tokens))).scalars()} if tokens else {}
    result = {}
    for key, checkout in newest.items():
        value = checkout.subtotal or checkout.total
        cart = carts.get(checkout.cart_token or "")
        if cart is not None and _later(cart.updated_at_src, checkout.updated_at_src):
            value = cart.total
        if value <= 0:
            continue
        result[key] = OpenCart(url=checkout.recovery_url, value=value, currency=checkout.currency)
    return result


def _later(a: datetime | None, b: datetime | None) -> bool:
    a, b = as_utc(a), as_utc(b)
    return a is not None and (b is None or a > b)


def strip_memory(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if not k.startswith("_")}
