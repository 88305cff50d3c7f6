"""Shopify's app lifecycle and privacy topics: an uninstall stops a shop; a shop's or a customer's data is
erased when Shopify asks (`shop/redact`, `customers/redact`); a customer's data is exported on request
(`customers/data_request`).

These deliveries are applied before a shop's others and whatever its status (a shop is erased 48 hours after it
uninstalled the app, when no other work is done for it). A customer's erasure reaches Brevo through the outbox
(target `erase`): the contact is deleted there, or anonymised if the shop chose so; the identifiers the call needs
are dropped from the row once Brevo answered.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import SQLModel, col

from connector.models import (
    Backfill,
    BackfillRow,
    Cart,
    Checkout,
    ConsentChange,
    Contact,
    Customer,
    DataExport,
    DeadLetter,
    InboxEntry,
    LoyaltyEntry,
    LoyaltyReward,
    Order,
    OrderLine,
    OutboxEntry,
    Refund,
    Shop,
)
from mappings.identity import customer_gid, normalise_email, normalise_phone
from mappings.shopify import PayloadError, as_id

ERASE = "erase"  # outbox target: a customer's Brevo contact, deleted or anonymised


@dataclass(frozen=True)
class CustomerRequest:
    """The customer a privacy request is about, as Shopify names them."""

    customer_id: int | None
    email: str | None
    phone: str | None
    orders: tuple[int, ...]
    request_id: str | None

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> CustomerRequest:
        customer = payload.get("customer")
        if not isinstance(customer, Mapping):
            raise PayloadError("no customer in the request")
        orders = payload.get("orders_to_redact") or payload.get("orders_requested") or []
        if not isinstance(orders, list):
            raise PayloadError("the order ids are not a list")
        request = payload.get("data_request")
        return cls(customer_id=as_id(customer["id"], "customer.id") if customer.get("id") is not None else None,
                   email=str(customer["email"]) if customer.get("email") else None,
                   phone=str(customer["phone"]) if customer.get("phone") else None,
                   orders=tuple(as_id(o, "orders") for o in orders),
                   request_id=str(request["id"]) if isinstance(request, Mapping) and request.get("id") else None)

    def scrubbed(self) -> str:
        """What is kept of the delivery once applied: the ids, never an email or a phone."""
        return json.dumps({"customer": {"id": self.customer_id}, "orders": list(self.orders),
                           "data_request": {"id": self.request_id} if self.request_id else None})


# --- app/uninstalled ---------------------------------------------------------------------------------------


def uninstall(session: Session, shop: Shop, now: datetime) -> None:
    """Stop all work for the shop and drop its Shopify token; its data stays until shop/redact (a merchant who
    reinstalls within 48 hours carries on where they were)."""
    shop.status = "uninstalled"
    shop.uninstalled_at = now
    shop.paused_reason = "the app was uninstalled from the store"
    shop.access_token_enc = shop.refresh_token_enc = None
    shop.access_token_expires_at = shop.refresh_token_expires_at = None


# --- shop/redact -------------------------------------------------------------------------------------------


def redact_shop(session: Session, shop: Shop) -> dict[str, int]:
    """Erase everything of the shop from every table, the shop's own row last. Returns rows deleted per table."""
    # Staged bulk lines first: they are found through the shop's backfills, deleted in the loop.
    deleted: dict[str, int] = {"backfill_rows": session.execute(sa.text(
        "DELETE FROM backfill_rows WHERE backfill_id IN (SELECT id FROM backfills WHERE shop_id = :shop)"),
        {"shop": shop.id}).rowcount}  # type: ignore[attr-defined]
    for table in reversed(SQLModel.metadata.sorted_tables):
        if "shop_id" in table.c and table.name != "shops":
            gone = session.execute(table.delete().where(table.c.shop_id == shop.id)).rowcount  # type: ignore[attr-defined]
        else:
            continue
        deleted[table.name] = gone
    deleted["inbox"] = session.execute(sa.delete(InboxEntry).where(
        col(InboxEntry.shop_domain) == shop.domain)).rowcount  # type: ignore[attr-defined]
    deleted["dead_letters"] = deleted.get("dead_letters", 0) + session.execute(sa.delete(DeadLetter).where(
        col(DeadLetter.shop_domain) == shop.domain)).rowcount  # type: ignore[attr-defined]
    session.execute(sa.delete(Shop).where(col(Shop.id) == shop.id))
    deleted["shops"] = 1
    return deleted


# --- what the connector holds on one customer --------------------------------------------------------------


@dataclass
class Holdings:
    """Where one customer is in the database: their contact keys (a guest they once were included), the
    emails and phones they were known by, their orders and checkouts."""

    keys: set[str]
    emails: set[str]
    phones: set[str]
    orders: set[int]
    checkouts: set[int]
    carts: set[str]


def holdings(session: Session, shop_id: int, request: CustomerRequest) -> Holdings:
    customer = (session.get(Customer, (shop_id, request.customer_id)) if request.customer_id else None)
    country = customer.country_code if customer else None
    emails = {e for e in (normalise_email(request.email), normalise_email(customer.email if customer else None)) if e}
    phones = {p for p in (request.phone, customer.phone if customer else None,
                          normalise_phone(request.phone, country)) if p}
    keys = {f"c:{request.customer_id}"} if request.customer_id else set()
    keys |= {f"e:{e}" for e in emails} | {f"p:{p}" for p in phones}
    contacts = session.execute(sa.select(Contact).where(col(Contact.shop_id) == shop_id, sa.or_(
        col(Contact.contact_key).in_(keys), col(Contact.merged_into).in_(keys),
        col(Contact.customer_id) == request.customer_id if request.customer_id else sa.false()))).scalars().all()
    for contact in contacts:
        keys.add(contact.contact_key)
        emails |= {e for e in (contact.email, contact.brevo_email) if e}
        phones |= {p for p in (contact.phone,) if p}
    # The orders Shopify names are theirs: so are the guests who placed them (not another customer).
    for key, email, phone in session.execute(sa.select(col(Order.contact_key), col(Order.email), col(Order.phone))
                                             .where(col(Order.shop_id) == shop_id,
                                                    col(Order.order_id).in_(request.orders or [0]))).tuples():
        if key and not key.startswith("c:"):
            keys.add(key)
            emails |= {e for e in (normalise_email(email),) if e}
            phones |= {p for p in (phone,) if p}
    by_buyer = sa.or_(col(Order.contact_key).in_(keys), col(Order.order_id).in_(request.orders or [0]),
                      col(Order.customer_id) == request.customer_id if request.customer_id else sa.false())
    orders = set(session.execute(sa.select(col(Order.order_id)).where(col(Order.shop_id) == shop_id, by_buyer))
                 .scalars())
    checkouts = session.execute(sa.select(col(Checkout.checkout_id), col(Checkout.cart_token)).where(
        col(Checkout.shop_id) == shop_id, sa.or_(
            col(Checkout.contact_key).in_(keys), col(Checkout.email).in_(emails or [""]),
            col(Checkout.customer_id) == request.customer_id if request.customer_id else sa.false()))).all()
    carts = {token for _, token in checkouts if token}
    carts |= {t for t in session.execute(sa.select(col(Order.cart_token)).where(
        col(Order.shop_id) == shop_id, col(Order.order_id).in_(orders or [0]))).scalars() if t}
    return Holdings(keys=keys, emails=emails, phones=phones, orders=orders, checkouts={c for c, _ in checkouts},
                    carts=carts)


def _mentions(column: Any, found: Holdings, customer_id: int | None) -> Any:
    """A text column that names the customer: one of their emails or phones, or their id as Shopify writes it."""
    needles = [*found.emails, *found.phones, *(p.lstrip("+") for p in found.phones if p.startswith("+"))]
    if customer_id:
        needles += [f'"id":{customer_id},', f'"id": {customer_id},', f"Customer/{customer_id}\""]
    return sa.or_(*(sa.func.lower(column).contains(n.lower(), autoescape=True) for n in needles)) if needles \
        else sa.false()


# --- customers/redact --------------------------------------------------------------------------------------


def redact_customer(session: Session, shop: Shop, request: CustomerRequest, *, brevo_mode: str, now: datetime,
                    keep_inbox: int | None = None) -> Holdings:
    """Erase the customer from the mirror, contact state, outbox, consent history, exports, dead letters and
    the raw deliveries that name them (`keep_inbox`, the request's own, is scrubbed by the caller); their ledger
    and reward rows stay, under an anonymous holder, so the shop's points still add up. Their Brevo contact is
    queued for deletion (or anonymisation) when Brevo ever received it."""
    shop_id = shop.id or 0
    found = holdings(session, shop_id, request)
    keys, orders = list(found.keys), list(found.orders)
    sent = session.execute(sa.select(col(Contact.contact_key), col(Contact.brevo_email), col(Contact.sent)).where(
        col(Contact.shop_id) == shop_id, col(Contact.contact_key).in_(keys), col(Contact.sent).is_not(None))).all()
    for model, column in ((OrderLine, OrderLine.order_id), (Refund, Refund.order_id), (Order, Order.order_id)):
        session.execute(sa.delete(model).where(col(model.shop_id) == shop_id, col(column).in_(orders or [0])))
    session.execute(sa.delete(Checkout).where(col(Checkout.shop_id) == shop_id,
                                              col(Checkout.checkout_id).in_(list(found.checkouts) or [0])))
    session.execute(sa.delete(Cart).where(col(Cart.shop_id) == shop_id, col(Cart.token).in_(list(found.carts) or [""])))
    if request.customer_id:
        session.execute(sa.delete(Customer).where(col(Customer.shop_id) == shop_id,
                                                  col(Customer.customer_id) == request.customer_id))
    for keyed in (Contact, ConsentChange, OutboxEntry):
        session.execute(sa.delete(keyed).where(col(keyed.shop_id) == shop_id, col(keyed.contact_key).in_(keys)))
    session.execute(sa.delete(DataExport).where(col(DataExport.shop_id) == shop_id, sa.or_(
        col(DataExport.customer_id) == request.customer_id if request.customer_id else sa.false(),
        _mentions(DataExport.body, found, request.customer_id))))
    # One anonymous holder per key: a merged guest's entries may repeat the customer's (they were left behind
    # so as not to count twice), and a ledger's entries are unique per holder.
    anonymous = secrets.token_hex(8)
    holders = {key: f"redacted:{anonymous}:{n}" for n, key in enumerate(sorted(keys))}
    for key, holder in holders.items():
        session.execute(sa.update(LoyaltyEntry).where(col(LoyaltyEntry.shop_id) == shop_id,
                                                      col(LoyaltyEntry.contact_key) == key).values(contact_key=holder))
    for reward in session.execute(sa.select(LoyaltyReward).where(col(LoyaltyReward.shop_id) == shop_id,
                                                                 col(LoyaltyReward.contact_key).in_(keys))).scalars():
        reward.contact_key = holders[reward.contact_key]
        reward.request_key = f"{reward.request_key.split(':', 1)[0]}:{reward.contact_key}:{reward.id}"
    holder = f"redacted:{anonymous}"
    session.execute(sa.delete(DeadLetter).where(
        sa.or_(col(DeadLetter.shop_id) == shop_id, col(DeadLetter.shop_domain) == shop.domain),
        sa.or_(col(DeadLetter.reference).in_(keys), _mentions(DeadLetter.payload, found, request.customer_id),
               _mentions(DeadLetter.reason, found, request.customer_id))))
    # The deliveries before the request (those of an active shop are applied by now: the request waited for
    # them); later ones are news, and other privacy requests wait for their own turn.
    session.execute(sa.delete(InboxEntry).where(
        col(InboxEntry.shop_domain) == shop.domain, col(InboxEntry.id) < (keep_inbox or 2 ** 62),
        col(InboxEntry.status) != "lifecycle", _mentions(InboxEntry.body, found, request.customer_id)))
    session.execute(sa.delete(BackfillRow).where(
        col(BackfillRow.backfill_id).in_(sa.select(col(Backfill.id)).where(col(Backfill.shop_id) == shop_id)),
        _mentions(BackfillRow.body, found, request.customer_id)))
    if sent:
        identifiers = {"ext_id": customer_gid(request.customer_id) if request.customer_id else None,
                       "emails": sorted({e for _, e, _ in sent if e} | {str(b.get("email")) for _, _, b in sent
                                                                       if (b or {}).get("email")}),
                       "phones": sorted({str((b or {}).get("attributes", {}).get("SMS")) for _, _, b in sent
                                         if (b or {}).get("attributes", {}).get("SMS")}),
                       "mode": brevo_mode}
        session.add(OutboxEntry(shop_id=shop_id, idempotency_key=f"erase:{holder}", event_name="contact_erased",
                                target=ERASE, contact_key=None, body=identifiers, status="pending", attempts=0,
                                created_at=now))
    return found


# --- customers/data_request --------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _rows(objects: Iterable[SQLModel], *, drop: tuple[str, ...] = ("shop_id",)) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in obj.model_dump().items() if k not in drop} for obj in objects]


def export_customer(session: Session, shop: Shop, request: CustomerRequest, *, now: datetime) -> dict[str, Any]:
    """Everything the connector holds on the customer, as JSON-able data."""
    shop_id = shop.id or 0
    found = holdings(session, shop_id, request)
    keys, orders = list(found.keys), list(found.orders) or [0]

    def select(model: Any, *where: Any) -> list[Any]:
        return list(session.execute(sa.select(model).where(col(model.shop_id) == shop_id, *where)).scalars())

    contacts = select(Contact, col(Contact.contact_key).in_(keys))
    return {
        "shop": shop.domain,
        "requested": {"customer_id": request.customer_id, "email": request.email, "phone": request.phone,
                      "orders": list(request.orders), "data_request_id": request.request_id},
        "exported_at": now.isoformat(),
        "customer": _rows(select(Customer, col(Customer.customer_id) == (request.customer_id or 0))),
        "contacts": _rows(contacts, drop=("shop_id", "pending", "pending_hash", "sent_hash", "lease_token")),
        "orders": _rows(select(Order, col(Order.order_id).in_(orders))),
        "order_lines": _rows(select(OrderLine, col(OrderLine.order_id).in_(orders))),
        "refunds": _rows(select(Refund, col(Refund.order_id).in_(orders))),
        "checkouts": _rows(select(Checkout, col(Checkout.checkout_id).in_(list(found.checkouts) or [0]))),
        "consent_history": _rows(select(ConsentChange, col(ConsentChange.contact_key).in_(keys))),
        "loyalty_entries": _rows(select(LoyaltyEntry, col(LoyaltyEntry.contact_key).in_(keys))),
        "loyalty_rewards": _rows(select(LoyaltyReward, col(LoyaltyReward.contact_key).in_(keys))),
        "brevo_events": _rows(select(OutboxEntry, col(OutboxEntry.contact_key).in_(keys)),
                              drop=("shop_id", "attempts", "next_attempt_at")),
    }


def store_export(session: Session, shop: Shop, request: CustomerRequest, event_id: str, *, now: datetime) -> None:
    data = export_customer(session, shop, request, now=now)
    key = request.request_id or event_id
    exists = session.execute(sa.select(col(DataExport.id)).where(
        col(DataExport.shop_id) == shop.id, col(DataExport.request_key) == key)).first()
    if exists is None:
        session.add(DataExport(shop_id=shop.id or 0, request_key=key[:100], customer_id=request.customer_id,
                               body=json.dumps(data, indent=2, default=str), created_at=now))


# --- deliveries for a shop the connector does not hold -----------------------------------------------------


def settle_unknown_shops(session: Session, now: datetime, *, limit: int = 50) -> int:
    """Lifecycle and privacy deliveries for a domain with no shop here (never installed, or erased already): all
    that is held of it is its raw deliveries. A shop erasure deletes them; a customer erasure deletes those that
    name the customer; a data request has nothing to export. Each request is kept without email or phone."""
    entries = session.execute(sa.select(InboxEntry).where(
        col(InboxEntry.status) == "lifecycle",
        ~sa.exists().where(col(Shop.domain) == col(InboxEntry.shop_domain))).order_by(col(InboxEntry.id))
        .limit(limit)).scalars().all()
    for entry in entries:
        entry.status, entry.processed_at = "applied", now
        if entry.topic == "shop/redact":
            session.execute(sa.delete(InboxEntry).where(col(InboxEntry.shop_domain) == entry.shop_domain,
                                                        col(InboxEntry.status) != "lifecycle"))
            session.execute(sa.delete(DeadLetter).where(col(DeadLetter.shop_domain) == entry.shop_domain))
            continue
        if entry.topic not in ("customers/redact", "customers/data_request"):
            continue
        try:
            payload = json.loads(entry.body)
            request = CustomerRequest.from_payload(payload if isinstance(payload, dict) else {})
        except (ValueError, PayloadError) as exc:
            entry.status, entry.error = "failed", f"unreadable {entry.topic} payload: {exc}"
            continue
        if entry.topic == "customers/redact":
            found = Holdings(keys=set(), emails={e for e in (normalise_email(request.email),) if e},
                             phones={p for p in (request.phone,) if p}, orders=set(), checkouts=set(), carts=set())
            session.execute(sa.delete(InboxEntry).where(
                col(InboxEntry.shop_domain) == entry.shop_domain, col(InboxEntry.id) < entry.id,
                col(InboxEntry.status) != "lifecycle", _mentions(InboxEntry.body, found, request.customer_id)))
        entry.body = request.scrubbed()
    return len(entries)
