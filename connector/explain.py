"""`connector contacts explain`: a buyer's figures, how each was computed, what Brevo holds, what was sent."""

from __future__ import annotations

import json

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import SystemClock, as_utc
from connector.database import unit_of_work
from connector.models import Contact, OutboxEntry, Shop
from connector.shops import ShopError, normalise_domain
from mappings.identity import normalise_email, normalise_phone
from sync.profiles import ShopContext, load_buyers, strip_memory


class ExplainError(Exception):
    """The buyer or the shop to explain is not known."""


def find_buyer(session: Session, domain: str, who: str) -> tuple[Shop, Contact]:
    """The shop and the buyer an operator means: by email address, phone number, or Shopify customer id."""
    shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
    if shop is None:
        raise ExplainError(f"no shop {domain}")
    email, phone = normalise_email(who), normalise_phone(who)
    if who.strip().isdigit() and not phone:
        match = col(Contact.customer_id) == int(who.strip())
    elif email or phone:
        match = col(Contact.email) == email if email else col(Contact.phone) == phone
    else:
        raise ExplainError(f"'{who}' is neither an email address, a phone number nor a customer id")
    contact = session.execute(sa.select(Contact).where(col(Contact.shop_id) == shop.id, match,
                                                       col(Contact.merged_into).is_(None))
                              .order_by(col(Contact.customer_id).is_(None))).scalars().first()
    if contact is None:
        raise ExplainError(f"no buyer {who} in {domain}")
    return shop, contact


def explain_contact(engine: Engine, domain: str, who: str, console: Console) -> None:
    try:
        domain = normalise_domain(domain)
    except ShopError as exc:
        raise ExplainError(str(exc)) from None
    with unit_of_work(engine) as session:
        shop, contact = find_buyer(session, domain, who)
        context = ShopContext.of(shop, SystemClock().now())
        [view] = load_buyers(session, context, [contact])
        events = session.execute(sa.select(OutboxEntry).where(
            col(OutboxEntry.shop_id) == shop.id, col(OutboxEntry.contact_key) == contact.contact_key)
            .order_by(col(OutboxEntry.id))).scalars().all()
        session.expunge_all()

    profile = view.profile
    console.print(f"[bold]{who}[/] in {domain}: contact {contact.contact_key}"
                  + (f", Shopify customer {contact.customer_id}" if contact.customer_id else " (guest)"))
    console.print(f"armed for triggers since {as_utc(contact.created_at)}; next trigger due "
                  f"{as_utc(contact.lifecycle_due_at) or 'none'}")
    console.print("\n[bold]How the figures were computed[/]")
    for note in profile.explanation:
        console.print(f"  - {note}")
    if view.rfm is not None:
        t = context.thresholds
        console.print(f"  - RFM {view.rfm.code} = recency {view.rfm.recency}, frequency {view.rfm.frequency}, "
                      f"monetary {view.rfm.monetary} -> {view.rfm.segment} (quintile cut points of "
                      f"{t.buyers if t else 0} buyers: days {list(map(str, t.recency_days)) if t else []}, "
                      f"orders {list(t.frequency) if t else []}, spent {list(map(str, t.monetary)) if t else []})")
    else:
        console.print("  - no RFM score: no counted order yet, or the shop's quintiles are not computed yet")

    table = Table("attribute", "now", "last sent to Brevo")
    sent = (contact.sent or {}).get("attributes", {})
    now_attributes = context.config.apply(view.attributes)
    for name in sorted(set(now_attributes) | set(sent)):
        table.add_row(name, _show(now_attributes.get(name)), _show(sent.get(name)))
    console.print(table)
    console.print(f"last delivered to Brevo: {as_utc(contact.pushed_at) or 'never'}; "
                  f"state {contact.push_state}" + (f" ({contact.last_error})" if contact.last_error else ""))
    if contact.pending:
        console.print(f"waiting to be sent: {json.dumps(strip_memory(contact.pending))[:300]}")

    upcoming = sorted((m for m in view.moments if m.due_at > context.now), key=lambda m: m.due_at)
    console.print("\n[bold]Upcoming triggers[/]" if upcoming else "\nno upcoming trigger")
    for moment in upcoming:
        console.print(f"  {moment.name} due {moment.due_at.isoformat()}  key {moment.key}", soft_wrap=True)
    console.print("\n[bold]Events[/] (name, status, idempotency key, when)" if events else "\nno events")
    for entry in events:
        when = as_utc(entry.delivered_at) or as_utc(entry.created_at)
        console.print(f"  {entry.event_name}  {entry.status}  {entry.idempotency_key}  {when}"
                      + (f"  ({entry.last_error})" if entry.last_error and entry.status != "delivered" else ""),
                      soft_wrap=True, highlight=False)


def _show(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "[]"
    return str(value)
