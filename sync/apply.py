"""The inbox applier: one handler per Shopify topic; mirror rows, dirty marks and outbox rows in one unit of work.

A topic is parsed first (an unreadable payload is quarantined before anything is written), then the whole
batch's lookups are prefetched into a `BatchMirror`, then each delivery is applied in arrival order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector import jsontext
from connector.clock import as_utc
from connector.models import (
    Cart,
    Checkout,
    ConsentChange,
    Contact,
    Customer,
    LoyaltyEntry,
    LoyaltyReward,
    Order,
    OrderLine,
    OutboxEntry,
    Product,
    Refund,
    update_row,
)
from mappings import ecommerce
from mappings import events as ev
from mappings.brevo_webhooks import BrevoOptOut
from mappings.shopify import (
    CartRecord,
    CheckoutRecord,
    ConsentRecord,
    CustomerRecord,
    LineRecord,
    OrderRecord,
    PayloadError,
    ProductRecord,
    RefundRecord,
    as_id,
)
from sync.mirror import BatchMirror, Wanted, insert_outbox


@dataclass
class ApplyContext:
    """What a handler needs: the open unit of work, the shop, and whether live events may be sent."""

    session: Session
    mirror: BatchMirror
    shop_id: int
    shop_domain: str
    shop_currency: str | None
    now: datetime
    live: bool  # a live delivery (webhook): its changes are triggers; history (backfill, polls) is not
    fresh: bool = True  # False when the delivery is older than the freshness window: events kept, not sent
    stale_reason: str | None = None
    dirty: dict[str, Contact] = field(default_factory=dict)
    events: list[ev.EventFact] = field(default_factory=list)
    event_enabled: Callable[[str], bool] | None = None
    happened: datetime | None = None  # when Shopify says the change happened: a new contact is armed then
    consent_to_shopify: frozenset[str] = frozenset({"email", "sms"})  # channels whose Brevo opt-outs go to Shopify
    # History's orders' Brevo ecommerce bodies as JSON text, by order id, made ahead by the helper that read them
    # (`Prepared`); an order not in it has its body made here.
    order_bodies: Mapping[int, str] = field(default_factory=dict)

    def touch(self, key: str | None, *, customer_id: int | None = None, email: str | None = None,
              phone: str | None = None, first_name: str | None = None, last_name: str | None = None) -> None:
        """Mark a contact for recomputation, creating it on first sight."""
        if not key:
            return
        contact = self.dirty.get(key) or self.mirror.get(Contact, key)
        history = not (self.live and self.fresh)
        if contact is None:
            contact = self.mirror.new(Contact, shop_id=self.shop_id, contact_key=key, customer_id=customer_id,
                                      email=email, phone=phone, first_name=first_name,
                                      last_name=last_name, dirty=True, history=history,
                                      created_at=self.happened or self.now)
        else:
            # History alone since the last rebuild: any other cause (news, a rescoring) makes it news again.
            values: dict[str, Any] = {"history": history and (contact.history or not contact.dirty), "dirty": True}
            if contact.merged_into:
                values["merged_into"] = None
            if customer_id:
                values["customer_id"] = customer_id
            if email:
                values["email"] = email
            if phone:
                values["phone"] = phone
            if first_name:
                values["first_name"], values["last_name"] = first_name, last_name
            update_row(contact, values)
        self.dirty[key] = contact

    def resolve(self, key: str | None) -> str | None:
        """A guest key merged into a customer stands for that customer: their later guest checkouts and
        orders (same email, no login) join the customer instead of reviving a second contact. So does a
        guest key whose email or phone is a known customer's."""
        if not key or key.startswith("c:"):
            return key
        guest = self.dirty.get(key) or self.mirror.get(Contact, key)
        if guest is not None:
            return guest.merged_into or key
        # No guest yet, but a customer with that email (or phone): a guest order placed after registering, or
        # history read customers first. It belongs to the customer, not to a second contact of the same buyer.
        kind, _, value = key.partition(":")
        customer = self.mirror.customer_with(email=value if kind == "e" else None, phone=value if kind == "p" else None)
        return customer.contact_key if customer is not None else key

    def emit(self, facts: Iterable[ev.EventFact]) -> None:
        self.events.extend(facts)


@dataclass(frozen=True)
class Topic:
    """How a topic's payload is read (raises PayloadError) and applied (returns "applied" or "stale")."""

    parse: Callable[[Mapping[str, Any]], Any]
    apply: Callable[[ApplyContext, Any], str]


def _is_stale(stored: datetime | None, incoming: datetime | None) -> bool:
    """Last write wins on the source's updated_at: an older version changes nothing."""
    stored, incoming = as_utc(stored), as_utc(incoming)
    return stored is not None and incoming is not None and incoming < stored


def _products(ctx: ApplyContext, ids: Iterable[int | None]) -> dict[int, ev.ProductInfo]:
    return {i: ev.ProductInfo(title=p.title, url=ev.product_url(ctx.shop_domain, p.handle), image_url=p.image_url)
            for i, p in ctx.mirror.products(ids).items()}


def _buyer(key: str, customer_id: int | None, email: str | None, phone: str | None) -> ev.Buyer | None:
    if not (email or phone or customer_id):
        return None
    return ev.Buyer(contact_key=key, customer_id=customer_id, email=email, phone=phone)


def _merge_guest(ctx: ApplyContext, customer_key: str, email: str | None, phone: str | None) -> None:
    """A guest who now has a customer id becomes that customer: their orders and checkouts follow."""
    for guest_key in (f"e:{email}" if email else None, f"p:{phone}" if phone else None):
        if not guest_key or guest_key == customer_key:
            continue
        guest = ctx.dirty.get(guest_key) or ctx.mirror.get(Contact, guest_key)
        if guest is None or guest.merged_into:
            continue
        ctx.mirror.orders_moved(guest_key, customer_key)
        for model in (Order, Checkout):
            ctx.session.execute(sa.update(model).where(col(model.shop_id) == ctx.shop_id,
                                                       col(model.contact_key) == guest_key)
                                .values(contact_key=customer_key))
        ctx.session.execute(sa.update(OutboxEntry).where(col(OutboxEntry.shop_id) == ctx.shop_id,
                                                         col(OutboxEntry.contact_key) == guest_key)
                            .values(contact_key=customer_key))
        _merge_ledger(ctx, guest_key, customer_key)
        guest.merged_into = customer_key
        guest.dirty = False
        guest.push_state = "idle"
        guest.lifecycle_due_at = None  # the customer's own moments carry on; the guest has none
        ctx.dirty.pop(guest_key, None)
        # The customer inherits what Brevo already knows of the guest, so no duplicate is created.
        customer = ctx.dirty.get(customer_key) or ctx.mirror.get(Contact, customer_key)
        if customer is not None and customer.sent is None and guest.sent is not None:
            customer.sent, customer.brevo_email = guest.sent, guest.brevo_email


def _merge_ledger(ctx: ApplyContext, guest_key: str, customer_key: str) -> None:
    """The guest's points follow them. An entry the customer already has (the same source) stays behind, so
    nothing counts twice; the builder then corrects the customer's ledger to what their history owes."""
    mine = sa.select(col(LoyaltyEntry.entry_key)).where(col(LoyaltyEntry.shop_id) == ctx.shop_id,
                                                        col(LoyaltyEntry.contact_key) == customer_key)
    ctx.session.execute(sa.update(LoyaltyEntry).where(
        col(LoyaltyEntry.shop_id) == ctx.shop_id, col(LoyaltyEntry.contact_key) == guest_key,
        col(LoyaltyEntry.entry_key).not_in(mine.scalar_subquery())).values(contact_key=customer_key))
    ctx.session.execute(sa.update(LoyaltyReward).where(col(LoyaltyReward.shop_id) == ctx.shop_id,
                                                       col(LoyaltyReward.contact_key) == guest_key)
                        .values(contact_key=customer_key))


# --- customers ------------------------------------------------------------------------------


def _record_consent(ctx: ApplyContext, key: str, consent: ConsentRecord, source: str) -> None:
    ctx.mirror.append(ConsentChange, shop_id=ctx.shop_id, contact_key=key, channel=consent.channel,
                      state=consent.state, opt_in_level=consent.opt_in_level, source=source,
                      occurred_at=consent.updated_at, recorded_at=ctx.now)


def _set_consent(ctx: ApplyContext, row: Customer, consent: ConsentRecord, source: str) -> bool:
    stored_at = row.email_consent_at if consent.channel == "email" else row.sms_consent_at
    stored = row.email_consent if consent.channel == "email" else row.sms_consent
    if _is_stale(stored_at, consent.updated_at) or (stored == consent.state and
                                                      as_utc(stored_at) == as_utc(consent.updated_at)):
        return False
    if consent.channel == "email":
        row.email_consent, row.email_consent_at = consent.state, consent.updated_at
    else:
        row.sms_consent, row.sms_consent_at = consent.state, consent.updated_at
    _record_consent(ctx, row.contact_key, consent, source)
    return True


def apply_customer(ctx: ApplyContext, rec: CustomerRecord, *, created: bool = False) -> str:
    key = rec.contact_key
    row = ctx.mirror.get(Customer, rec.customer_id)
    if row is not None and _is_stale(row.updated_at_src, rec.updated_at):
        return "stale"
    if row is None:
        row = ctx.mirror.new(Customer, shop_id=ctx.shop_id, customer_id=rec.customer_id, contact_key=key)
    values: dict[str, Any] = {
        "email": rec.email, "phone": rec.phone, "first_name": rec.first_name, "last_name": rec.last_name,
        "locale": rec.locale, "country_code": rec.country_code, "city": rec.city, "state": rec.state,
        "note": rec.note, "deleted": False, "created_at_src": rec.created_at or row.created_at_src,
        "updated_at_src": rec.updated_at or row.updated_at_src}
    if rec.tags is not None:
        values["tags"] = rec.tags
    if rec.birthday is not None:  # a webhook without the metafield keeps the birthday a GraphQL read stored
        values["birthday"] = rec.birthday
    update_row(row, values)
    for consent in (rec.email_consent, rec.sms_consent):
        if consent is not None:
            _set_consent(ctx, row, consent, "customer")
    _merge_guest(ctx, key, rec.email, rec.phone)
    # A new contact takes the customer's name: else each customer's first order would set it, an update of its own
    # per buyer (a backfill's 90,000 customers with orders: 90,000 statements). A stored one keeps the name its
    # orders gave it: the customer's own is read first anyway (`load_buyers`), and one without a last name must
    # not erase the one an order's billing address gave.
    known = ctx.dirty.get(key) or ctx.mirror.get(Contact, key)
    first, last = (None, None) if known is not None else (rec.first_name, rec.last_name)
    ctx.touch(key, customer_id=rec.customer_id, email=rec.email, phone=rec.phone, first_name=first, last_name=last)
    if created and ctx.live:
        buyer = _buyer(key, rec.customer_id, rec.email, rec.phone)
        if buyer is not None:
            ctx.emit([ev.customer_created_event(buyer, rec.created_at, ctx.shop_domain)])
    return "applied"


def apply_customer_deleted(ctx: ApplyContext, customer_id: int) -> str:
    row = ctx.mirror.get(Customer, customer_id)
    if row is None:
        row = ctx.mirror.new(Customer, shop_id=ctx.shop_id, customer_id=customer_id, contact_key=f"c:{customer_id}")
    row.deleted = True
    return "applied"


def apply_consent(ctx: ApplyContext, consent: ConsentRecord) -> str:
    if not consent.customer_id or not consent.state:
        return "stale"
    row = ctx.mirror.get(Customer, consent.customer_id)
    if row is None:  # consent can arrive before customers/create: keep it on a stub the create will fill
        row = ctx.mirror.new(Customer, shop_id=ctx.shop_id, customer_id=consent.customer_id,
                             contact_key=f"c:{consent.customer_id}",
                             email=consent.address if consent.channel == "email" else None)
    if not _set_consent(ctx, row, consent, f"shopify:{consent.channel}_consent_topic"):
        return "stale"
    ctx.touch(row.contact_key, customer_id=row.customer_id)
    return "applied"


# --- orders and refunds ---------------------------------------------------------------------


_LINE_FIELDS = ("line_id", "product_id", "variant_id", "title", "variant_title", "sku", "vendor", "quantity",
                "price", "total_discount")


def _line_records(ctx: ApplyContext, order_id: int) -> tuple[LineRecord, ...]:
    pending = ctx.mirror.pending_lines(order_id)
    if pending is not None:
        return tuple(LineRecord(**{name: line[name] for name in _LINE_FIELDS}) for line in pending)
    rows = ctx.session.execute(sa.select(OrderLine).where(col(OrderLine.shop_id) == ctx.shop_id,
                                                          col(OrderLine.order_id) == order_id)).scalars()
    return tuple(LineRecord(**{name: getattr(r, name) for name in _LINE_FIELDS}) for r in rows)


def _store_refund(ctx: ApplyContext, rec: RefundRecord) -> bool:
    if ctx.mirror.get(Refund, rec.refund_id) is not None:
        return False  # refunds never change once issued
    ctx.mirror.new(Refund, shop_id=ctx.shop_id, refund_id=rec.refund_id, order_id=rec.order_id, amount=rec.amount,
                   lines=[{"line_item_id": lid, "quantity": q} for lid, q in rec.lines],
                   created_at_src=rec.created_at)
    return True


def apply_order(ctx: ApplyContext, rec: OrderRecord) -> str:
    row = ctx.mirror.get(Order, rec.order_id)
    if row is not None and _is_stale(row.updated_at_src, rec.updated_at):
        return "stale"
    key = ctx.resolve(rec.contact_key)
    if rec.customer is not None and not ctx.mirror.exists(Customer, rec.customer.customer_id):
        # the order knows the buyer before customers/create arrives: start a stub
        c = rec.customer
        ctx.mirror.new(Customer, shop_id=ctx.shop_id, customer_id=c.customer_id, contact_key=c.contact_key,
                       email=c.email or rec.email, phone=c.phone or rec.phone,
                       first_name=c.first_name, last_name=c.last_name,
                       country_code=c.country_code, city=c.city)
    if key and key.startswith("c:"):
        _merge_guest(ctx, key, rec.email, rec.phone)
    previous_key = row.contact_key if row is not None else None
    values = {
        "contact_key": key, "customer_id": rec.customer_id, "email": rec.email, "phone": rec.phone,
        "name": rec.name, "order_number": rec.order_number, "currency": rec.currency,
        "presentment_currency": rec.presentment_currency, "subtotal": rec.subtotal, "total": rec.total,
        "total_tax": rec.total_tax, "total_discounts": rec.total_discounts, "total_shipping": rec.total_shipping,
        "financial_status": rec.financial_status, "fulfillment_status": rec.fulfillment_status, "test": rec.test,
        "cart_token": rec.cart_token, "checkout_token": rec.checkout_token, "checkout_id": rec.checkout_id,
        "discount_codes": list(rec.discount_codes), "order_status_url": rec.order_status_url,
        "created_at_src": rec.created_at, "cancelled_at": rec.cancelled_at, "updated_at_src": rec.updated_at,
        "source_name": rec.source_name, "tags": rec.tags, "subscription": rec.subscription, "rebill": rec.rebill,
        "fulfilled_at": rec.fulfilled_at or (row.fulfilled_at if row is not None
                                             and rec.fulfillment_status == "fulfilled" else None),
        "country_code": rec.country_code, "city": rec.city, "locale": rec.locale,
        "points_basis": rec.points_basis,
    }
    if row is None:
        row = ctx.mirror.new(Order, shop_id=ctx.shop_id, order_id=rec.order_id, **values)
    else:
        update_row(row, values)
    ctx.mirror.replace_lines(row, [
        {"shop_id": ctx.shop_id, "order_id": rec.order_id, "line_id": line.line_id or i + 1,
         "product_id": line.product_id, "variant_id": line.variant_id, "title": line.title,
         "variant_title": line.variant_title, "sku": line.sku, "vendor": line.vendor, "quantity": line.quantity,
         "price": line.price, "total_discount": line.total_discount}
        for i, line in enumerate(_unique_lines(rec.lines))])
    for refund in rec.refunds:
        _store_refund(ctx, refund)
    recovered = _complete_checkouts(ctx, rec)
    ctx.touch(key, customer_id=rec.customer_id, email=rec.email, phone=rec.phone, first_name=rec.first_name,
              last_name=rec.last_name)
    if previous_key and previous_key != key:
        ctx.touch(previous_key)
    buyer = _buyer(key, rec.customer_id, rec.email, rec.phone) if key else None
    if buyer is not None and not rec.test and (buyer.email or buyer.phone or buyer.customer_id):
        # Brevo's ecommerce order in its latest state: live, or history that loads without firing automations.
        status = ecommerce.order_status(rec)
        live = ctx.live and ctx.fresh  # a delivery older than the freshness window is history too
        made = None if live else ctx.order_bodies.get(rec.order_id)
        ctx.emit([ev.EventFact(name=ecommerce.BREVO_ORDER, target="order" if live else ecommerce.HISTORY_ORDER,
                               contact_key=key or "",
                               key=f"{ctx.shop_domain}:{ecommerce.BREVO_ORDER}:{rec.order_id}:{status}",
                               occurred_at=rec.updated_at,
                               body=made if made is not None else _order_body(rec, buyer, ctx.shop_domain))])
    if ctx.live and key and buyer is not None:
        products = _products(ctx, (line.product_id for line in rec.lines))
        ctx.emit(ev.order_events(rec, buyer, products, ctx.shop_domain))
        if not rec.test and rec.cancelled_at is None:
            earlier = _earlier_orders(ctx, key, rec)
            ctx.emit([ev.purchase_sequence_event(rec, buyer, products, ctx.shop_domain, earlier)])
        for checkout in recovered:
            ctx.emit([ev.cart_recovered_event(checkout.checkout_id, checkout.cart_token or checkout.token,
                                              rec, buyer, ctx.shop_domain)])
        # Refunds that arrived before their order are announced now that we know the buyer.
        known = {r.refund_id for r in rec.refunds}
        summary = ev.OrderSummary(name=rec.name, currency=rec.currency, total=rec.total, test=rec.test,
                                  lines=rec.lines)
        for refund_row in ctx.mirror.refunds_of(rec.order_id):
            if refund_row.refund_id not in known:
                ctx.emit(ev.refund_events(_refund_record(refund_row), summary, buyer, products, ctx.shop_domain))
    return "applied"


def _order_body(rec: OrderRecord, buyer: ev.Buyer, shop_domain: str) -> dict[str, Any]:
    """The order's Brevo ecommerce body in its latest state: from the order alone (the buyer's identifiers are
    the order's own email, phone or customer id), so that `prepare` makes the same body ahead."""
    return ecommerce.order_body(rec, buyer, shop_domain, ecommerce.order_status(rec), rec.updated_at)


def _unique_lines(lines: Iterable[LineRecord]) -> list[LineRecord]:
    seen: set[int] = set()
    unique = []
    for line in lines:
        if line.line_id and line.line_id in seen:
            continue
        seen.add(line.line_id)
        unique.append(line)
    return unique


def _refund_record(row: Refund) -> RefundRecord:
    return RefundRecord(refund_id=row.refund_id, order_id=row.order_id, amount=row.amount,
                        lines=tuple((int(li["line_item_id"]), int(li["quantity"])) for li in row.lines or []),
                        created_at=as_utc(row.created_at_src))


def _earlier_orders(ctx: ApplyContext, key: str, rec: OrderRecord) -> int:
    """How many other purchases of this buyer the connector already knows (cancelled and test orders are none).

    Whatever their dates: an older order delivered late is a repeat for the flows, and each buyer is
    announced "first" once."""
    return ctx.mirror.purchases_besides(key, rec.order_id)


def _complete_checkouts(ctx: ApplyContext, rec: OrderRecord) -> list[Checkout]:
    """Checkouts this order completes; returns those whose abandonment had been announced (recovered)."""
    recovered = []
    for checkout in ctx.mirror.checkouts_completed_by(rec.checkout_token, rec.cart_token, rec.checkout_id):
        if checkout.completed_at is None:
            checkout.completed_at = rec.created_at or ctx.now
            abandoned_key = f"{ctx.shop_domain}:cart_abandoned:{checkout.checkout_id}"
            # A reminder not sent yet must not reach a buyer who has just bought.
            ctx.session.execute(sa.update(OutboxEntry).where(
                col(OutboxEntry.shop_id) == ctx.shop_id, col(OutboxEntry.idempotency_key) == abandoned_key,
                col(OutboxEntry.status) == "pending").values(status="superseded",
                                                             last_error="the order arrived before it was sent"))
            announced = ctx.session.execute(sa.select(col(OutboxEntry.id)).where(
                col(OutboxEntry.shop_id) == ctx.shop_id, col(OutboxEntry.idempotency_key) == abandoned_key,
                col(OutboxEntry.status) == "delivered")).first()
            if announced is not None:
                recovered.append(checkout)
        ctx.touch(checkout.contact_key)
    return recovered


@dataclass(frozen=True)
class RefundDelivery:
    """A refunds/create payload, read once to check it; its amount is read again in the order's currency."""

    order_id: int
    refund_id: int
    payload: Mapping[str, Any]

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> RefundDelivery:
        order_id = as_id(payload.get("order_id"), "order_id")
        return cls(order_id=order_id, refund_id=RefundRecord.from_payload(payload, order_id=order_id).refund_id,
                   payload=payload)


def apply_refund(ctx: ApplyContext, delivery: RefundDelivery) -> str:
    order_id = delivery.order_id
    order = ctx.mirror.get(Order, order_id)
    rec = RefundRecord.from_payload(delivery.payload, order_id=order_id,
                                    shop_currency=order.currency if order else ctx.shop_currency)
    if not _store_refund(ctx, rec):
        return "stale"
    if order is None or not order.contact_key:
        return "applied"  # the order's own delivery will announce it
    ctx.touch(order.contact_key)
    if ctx.live:
        buyer = _buyer(order.contact_key, order.customer_id, order.email, order.phone)
        if buyer is not None:
            lines = _line_records(ctx, order_id)
            summary = ev.OrderSummary(name=order.name, currency=order.currency, total=order.total, test=order.test,
                                      lines=lines)
            ctx.emit(ev.refund_events(rec, summary, buyer, _products(ctx, (li.product_id for li in lines)),
                                      ctx.shop_domain))
    return "applied"


# --- products, checkouts, carts -------------------------------------------------------------


def apply_product(ctx: ApplyContext, rec: ProductRecord) -> str:
    row = ctx.mirror.get(Product, rec.product_id)
    if row is not None and _is_stale(row.updated_at_src, rec.updated_at):
        return "stale"
    if row is None:
        row = ctx.mirror.new(Product, shop_id=ctx.shop_id, product_id=rec.product_id)
    row.title, row.handle, row.product_type, row.vendor = rec.title, rec.handle, rec.product_type, rec.vendor
    row.tags, row.status, row.image_url, row.updated_at_src = rec.tags, rec.status, rec.image_url, rec.updated_at
    if rec.collections is not None:  # a webhook says nothing about collections: keep what a backfill stored
        row.collections = list(rec.collections)
    row.deleted = False
    row.brevo_hash = None  # Brevo's copy of the product is due for an update
    return "applied"


def apply_product_deleted(ctx: ApplyContext, product_id: int) -> str:
    row = ctx.mirror.get(Product, product_id)
    if row is None:
        row = ctx.mirror.new(Product, shop_id=ctx.shop_id, product_id=product_id)
    row.deleted = True
    row.brevo_hash = None
    return "applied"


def apply_checkout(ctx: ApplyContext, rec: CheckoutRecord) -> str:
    row = ctx.mirror.get(Checkout, rec.checkout_id)
    if row is not None and _is_stale(row.updated_at_src, rec.updated_at):
        return "stale"
    previous_key = row.contact_key if row is not None else None
    key = ctx.resolve(rec.contact_key) or previous_key
    if row is None:
        row = ctx.mirror.new(Checkout, shop_id=ctx.shop_id, checkout_id=rec.checkout_id)
    order = ctx.mirror.order_completing(rec.checkout_id, rec.token, rec.cart_token)
    completed_at = rec.completed_at or (as_utc(order.created_at_src) or ctx.now if order is not None else None)
    row.token, row.cart_token, row.contact_key, row.customer_id = rec.token, rec.cart_token, key, rec.customer_id
    row.email, row.phone, row.currency = rec.email or row.email, rec.phone or row.phone, rec.currency
    row.subtotal, row.total, row.recovery_url = rec.subtotal, rec.total, rec.recovery_url
    row.lines, row.completed_at = list(rec.lines), completed_at or row.completed_at
    row.created_at_src, row.updated_at_src = rec.created_at, rec.updated_at
    if key and key.startswith("c:"):
        _merge_guest(ctx, key, rec.email, rec.phone)
    ctx.touch(key, customer_id=rec.customer_id, email=rec.email, phone=rec.phone, first_name=rec.first_name,
              last_name=rec.last_name)
    if previous_key and previous_key != key:
        ctx.touch(previous_key)
    if ctx.live and key and row.completed_at is None:
        buyer = _buyer(key, rec.customer_id, row.email, row.phone)
        if buyer is not None:
            ids = (li.get("product_id") for li in rec.lines)
            ctx.emit(ev.checkout_events(rec, buyer, _products(ctx, ids), ctx.shop_domain))
    return "applied"


def apply_cart(ctx: ApplyContext, rec: CartRecord) -> str:
    row = ctx.mirror.get(Cart, rec.token)
    if row is not None and _is_stale(row.updated_at_src, rec.updated_at):
        return "stale"
    if row is None:
        row = ctx.mirror.new(Cart, shop_id=ctx.shop_id, token=rec.token)
    row.lines, row.total = list(rec.lines), rec.total
    row.created_at_src, row.updated_at_src = rec.created_at, rec.updated_at
    # Carts are anonymous: they reach a buyer only through a checkout with the same token.
    checkout = ctx.mirror.checkout_for_cart(rec.token)
    if checkout is None or checkout.completed_at is not None or not checkout.contact_key:
        return "applied"
    ctx.touch(checkout.contact_key)
    if ctx.live:
        buyer = _buyer(checkout.contact_key, checkout.customer_id, checkout.email, checkout.phone)
        if buyer is not None:
            fact = ev.cart_updated_event(rec.token, rec.lines, rec.total, checkout.currency, checkout.recovery_url,
                                         rec.updated_at, buyer, _products(ctx, (li.get("product_id") for li in
                                                                                rec.lines)), ctx.shop_domain)
            if fact is not None:
                ctx.emit([fact])
    return "applied"


def _id_of(payload: Mapping[str, Any]) -> int:
    return as_id(payload.get("id"), "id")


# --- consent from Brevo (two-way consent) ----------------------------------------------------------------


SHOPIFY_CONSENT = "shopify_consent"  # outbox target: a customer's consent written to Shopify


def _brevo_opt_out(payload: Mapping[str, Any]) -> BrevoOptOut:
    parsed = BrevoOptOut.from_payload(payload)
    if parsed is None:
        raise PayloadError("not an unsubscribe, hard bounce, spam complaint or STOP")
    return parsed


def apply_brevo_opt_out(ctx: ApplyContext, rec: BrevoOptOut) -> str:
    """A buyer opted out in Brevo (or their address bounced, or they complained). The consent history records
    it; the contact remembers that Brevo holds the opt-out, so Shopify's echo of it sends nothing back; and,
    where the shop lets Brevo's opt-outs count in Shopify, the customer's consent there is updated."""
    email = rec.address if rec.channel == "email" else None
    phone = rec.address if rec.channel == "sms" else None
    customer = ctx.mirror.customer_with(email=email, phone=phone)
    key = customer.contact_key if customer is not None else f"{'e' if email else 'p'}:{rec.address}"
    contact = ctx.dirty.get(key) or ctx.mirror.get(Contact, key)
    if customer is None and contact is None:
        return "stale"  # nobody this shop knows
    ctx.mirror.append(ConsentChange, shop_id=ctx.shop_id, contact_key=key, channel=rec.channel,
                      state="unsubscribed", opt_in_level=None, source=f"brevo:{rec.reason}",
                      occurred_at=rec.occurred_at, recorded_at=ctx.now)
    if contact is not None and contact.sent is not None:
        sent = dict(contact.sent)
        sent["_consent"] = {**sent.get("_consent", {}), f"told_{rec.channel}": True}
        contact.sent = sent
    stored = (customer.email_consent if rec.channel == "email" else customer.sms_consent) if customer else None
    if customer is not None and rec.channel in ctx.consent_to_shopify and stored not in ("unsubscribed",
                                                                                        "redacted", "invalid"):
        at = rec.occurred_at or ctx.now
        ctx.emit([ev.EventFact(name="shopify_consent_update", target=SHOPIFY_CONSENT, contact_key=key,
                               key=f"shopify_consent:{rec.channel}:{customer.customer_id}:{at.isoformat()}",
                               occurred_at=at,
                               body={"customer_id": customer.customer_id, "channel": rec.channel,
                                     "state": "UNSUBSCRIBED", "at": at.isoformat(), "reason": rec.reason})])
    return "applied"


_ORDER = Topic(OrderRecord.from_payload, apply_order)
_CUSTOMER = Topic(CustomerRecord.from_payload, apply_customer)
_PRODUCT = Topic(ProductRecord.from_payload, apply_product)
_CHECKOUT = Topic(CheckoutRecord.from_payload, apply_checkout)
_CART = Topic(CartRecord.from_payload, apply_cart)

TOPICS: dict[str, Topic] = {
    "customers/create": Topic(CustomerRecord.from_payload, lambda ctx, rec: apply_customer(ctx, rec, created=True)),
    "customers/update": _CUSTOMER,
    "customers/delete": Topic(_id_of, apply_customer_deleted),
    "customers_email_marketing_consent/update": Topic(ConsentRecord.from_email_topic, apply_consent),
    "customers_marketing_consent/update": Topic(ConsentRecord.from_sms_topic, apply_consent),
    "orders/create": _ORDER,
    "orders/updated": _ORDER,
    "orders/paid": _ORDER,
    "orders/cancelled": _ORDER,
    "orders/fulfilled": _ORDER,
    "orders/partially_fulfilled": _ORDER,
    "refunds/create": Topic(RefundDelivery.from_payload, apply_refund),
    "products/create": _PRODUCT,
    "products/update": _PRODUCT,
    "products/delete": Topic(_id_of, apply_product_deleted),
    "checkouts/create": _CHECKOUT,
    "checkouts/update": _CHECKOUT,
    "carts/create": _CART,
    "carts/update": _CART,
    "brevo/opt_out": Topic(_brevo_opt_out, apply_brevo_opt_out),
}


def _line_products(lines: Iterable[Any]) -> list[int | None]:
    return [line.product_id if isinstance(line, LineRecord) else line.get("product_id") for line in lines]


def wanted_by(records: Iterable[Any], *, live: bool = True) -> Wanted:
    """Everything applying these parsed deliveries will look up, for one prefetch. Without `live` (history: no
    event is made), not the orders each buyer already has, which only an order's live events count, nor the
    products of its lines, which only its live events name."""
    wanted = Wanted()
    for rec in records:
        if isinstance(rec, OrderRecord):
            wanted.add(Order, rec.order_id)
            wanted.buyer(rec.contact_key, rec.email, rec.phone)
            if live:
                wanted.order_keys.add(rec.contact_key or "")
            if rec.customer is not None:
                wanted.present[Customer].add(rec.customer.customer_id)
            wanted.refunds_of.add(rec.order_id)
            wanted.add(Refund, *(r.refund_id for r in rec.refunds))
            wanted.checkouts_by["token"].add(rec.checkout_token)
            wanted.checkouts_by["cart_token"].add(rec.cart_token)
            wanted.checkouts_by["checkout_id"].add(rec.checkout_id)
            if live:  # only a live order's events name its products
                wanted.add(Product, *_line_products(rec.lines))
        elif isinstance(rec, CustomerRecord):
            wanted.add(Customer, rec.customer_id)
            wanted.buyer(rec.contact_key, rec.email, rec.phone)
        elif isinstance(rec, ConsentRecord):
            wanted.add(Customer, rec.customer_id)
            wanted.contact(f"c:{rec.customer_id}" if rec.customer_id else None)
        elif isinstance(rec, RefundDelivery):
            wanted.add(Order, rec.order_id)
            wanted.add(Refund, rec.refund_id)
            wanted.refunds_of.add(rec.order_id)
        elif isinstance(rec, ProductRecord):
            wanted.add(Product, rec.product_id)
        elif isinstance(rec, CheckoutRecord):
            wanted.add(Checkout, rec.checkout_id)
            wanted.buyer(rec.contact_key, rec.email, rec.phone)
            wanted.orders_by_checkout["checkout_id"].add(rec.checkout_id)
            wanted.orders_by_checkout["checkout_token"].add(rec.token)
            wanted.orders_by_checkout["cart_token"].add(rec.cart_token)
            wanted.add(Product, *_line_products(rec.lines))
        elif isinstance(rec, BrevoOptOut):
            email = rec.address if rec.channel == "email" else None
            wanted.buyer(f"{'e' if email else 'p'}:{rec.address}", email, None if email else rec.address)
        elif isinstance(rec, CartRecord):
            wanted.add(Cart, rec.token)
            wanted.checkouts_by["cart_token"].add(rec.token)
            wanted.add(Product, *_line_products(rec.lines))
    wanted.order_keys.discard("")
    return wanted


@dataclass(frozen=True)
class Prepared:
    """What applying a chunk of history needs that depends on its records alone, made ahead by the helper process
    that read them (`backfill.read_staged`), on the core the worker does not apply with: the lookups applying them
    makes (`wanted_by`), and each history order's Brevo ecommerce body as JSON text (`order_bodies`)."""

    wanted: Wanted
    order_bodies: dict[int, str]


def prepare(records: Sequence[Any], shop_domain: str) -> Prepared:
    """`Prepared` for these parsed records of the shop's history. A body is made for each order that can have one
    (not a test, with an email, phone or customer id); `apply_order` still decides whether it is sent."""
    bodies: dict[int, str] = {}
    for rec in records:
        if isinstance(rec, OrderRecord) and not rec.test:
            buyer = _buyer("", rec.customer_id, rec.email, rec.phone)
            if buyer is not None:
                bodies[rec.order_id] = jsontext.dumps(_order_body(rec, buyer, shop_domain))
    return Prepared(wanted_by(records, live=False), bodies)


def write_events(ctx: ApplyContext) -> int:
    """Queue the collected events for the outbox with the batch; a key already there is left alone."""
    rows = outbox_rows(ctx.shop_id, ctx.events, now=ctx.now, status="pending" if ctx.fresh else "skipped",
                       reason=ctx.stale_reason, enabled=ctx.event_enabled)
    ctx.mirror.queue_outbox(rows)
    ctx.events.clear()
    return len(rows)


_ANY_AGE = (ecommerce.HISTORY_ORDER, SHOPIFY_CONSENT)


def outbox_rows(shop_id: int, facts: Iterable[ev.EventFact], *, now: datetime, status: str = "pending",
                reason: str | None = None, enabled: Callable[[str], bool] | None = None) -> list[dict[str, Any]]:
    """Outbox rows for these facts, one per idempotency key. An event the shop switched off is recorded as
    `disabled`, so `contacts explain` can say so."""
    rows = []
    seen: set[str] = set()
    for fact in facts:
        if fact.key in seen:
            continue
        seen.add(fact.key)
        off = enabled is not None and not enabled(fact.name)
        rows.append({"shop_id": shop_id, "idempotency_key": fact.key, "event_name": fact.name,
                     "target": fact.target, "contact_key": fact.contact_key,
                     "body": jsontext.embedded(fact.body) if isinstance(fact.body, str) else fact.body,
                     # History for Brevo ecommerce triggers nothing, and consent is no trigger: both are sent
                     # however old the delivery.
                     "status": "disabled" if off else "pending" if fact.target in _ANY_AGE else status,
                     "attempts": 0, "created_at": now,
                     "last_error": "switched off in the shop's configuration" if off else
                     None if fact.target in _ANY_AGE else reason})
    return rows


def insert_events(session: Session, shop_id: int, facts: Iterable[ev.EventFact], *, now: datetime,
                  status: str = "pending", reason: str | None = None,
                  enabled: Callable[[str], bool] | None = None) -> int:
    """The one way into the outbox: unique per (shop, idempotency key), "do nothing" on a replay."""
    rows = outbox_rows(shop_id, facts, now=now, status=status, reason=reason, enabled=enabled)
    insert_outbox(session, rows)
    return len(rows)
