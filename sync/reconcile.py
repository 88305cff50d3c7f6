"""Reconciliation polls: what a webhook missed is read from Shopify and applied as history, within minutes.

Per shop and resource (customers, orders, products, abandoned checkouts) a `poll_states` row holds a bookmark.
A due poll reads, page by page, the objects updated between the bookmark and the end of its pass — a moment
`INDEX_LAG` before the pass began, since Shopify's search trails its writes — and queues each as an inbox row
with source `poll`, handled like a backfilled object: as history (no automation fires), last write wins on
`updated_at`, and an object already queued in the same version (by a backfill or an earlier poll) is not queued
again. Each page's objects and the cursor of the next page are committed together; only a finished pass moves
the bookmark, to its end. So the bookmark never moves past an object not stored, and a pass cut short (an
outage, a throttled shop, a worker stopped) goes on at its next page.

The due times live in the table and the workers run the polls while they hold the shop's lease; a paused shop is
not leased, so not polled.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.brevo import BrevoClient
from connector.clock import as_utc
from connector.database import insert_new, unit_of_work
from connector.models import (
    Backfill,
    Checkout,
    Contact,
    Customer,
    InboxEntry,
    Order,
    OutboxEntry,
    PollState,
    Product,
    Shop,
)
from connector.shopify import ShopifyClient, ShopifyRejected
from mappings.ecommerce import BREVO_ORDER
from mappings.shopify_graphql import RESOURCES, legacy_id
from sync.backfill import history_rows
from sync.queue import Lease, fence

INDEX_LAG = timedelta(minutes=2)  # a pass ends this long before it starts: Shopify's search index trails writes
PAGES_PER_TURN = 20  # a long pass (a shop back from an outage) gives the shop's other work its turn in between
POLLED = ("customers", "products", "orders", "checkouts")


def window(bookmark: datetime, until: datetime) -> str:
    """Shopify's search for the objects changed in [bookmark, until]."""
    def stamp(moment: datetime) -> str:
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"updated_at:>='{stamp(bookmark)}' AND updated_at:<='{stamp(until)}'"


def ensure_polls(engine: Engine, shop_id: int, now: datetime) -> None:
    """A shop's poll rows, due at once. A resource already backfilled is read from the moment its backfill
    started (the bulk query saw everything before); otherwise from now: history is the backfill's job."""
    with unit_of_work(engine) as session:
        started = dict(session.execute(sa.select(col(Backfill.resource), col(Backfill.started_at)).where(
            col(Backfill.shop_id) == shop_id)).tuples().all())
        insert_new(session, PollState, [
            {"shop_id": shop_id, "resource": name, "bookmark": as_utc(started.get(name)) or now, "due_at": now,
             "last_found": 0, "found": 0} for name in POLLED], ["shop_id", "resource"])


def due_polls(engine: Engine, shop_id: int, now: datetime) -> list[PollState]:
    with unit_of_work(engine) as session:
        states = session.execute(sa.select(PollState).where(
            col(PollState.shop_id) == shop_id, col(PollState.due_at) <= now).order_by(col(PollState.id))
        ).scalars().all()
        for state in states:
            session.expunge(state)
    return [s for s in states if s.resource in RESOURCES]


def poll_turn(engine: Engine, client: ShopifyClient, lease: Lease, state: PollState, *, now: datetime,
              every: timedelta, lease_seconds: float, pages: int = PAGES_PER_TURN) -> int:
    """Read up to `pages` pages of the resource's pass (starting one when none is under way); returns how many
    objects were queued. Shopify's errors are raised (the caller records or pauses); what was read stays."""
    resource = RESOURCES[state.resource]
    bookmark = as_utc(state.bookmark)
    assert bookmark is not None
    if state.pass_until is None:
        until = now - INDEX_LAG
        if until <= bookmark:  # nothing can be read yet
            _save(engine, lease, state, lease_seconds, now=now, due_at=now + every)
            return 0
        _save(engine, lease, state, lease_seconds, now=now, pass_until=until, cursor=None, last_found=0)
    assert state.pass_until is not None
    search = window(bookmark, state.pass_until)
    queued = 0
    for _ in range(pages):
        try:
            page = client.page(resource, search, state.cursor)
        except ShopifyRejected:
            # A cursor Shopify no longer knows, or a query it refuses: the pass starts over next time.
            _save(engine, lease, state, lease_seconds, now=now, pass_until=None, cursor=None)
            raise
        rows = list(history_rows(resource, lease.domain, page.objects, "poll", now))
        done = not page.has_next or not page.end_cursor
        values: dict[str, object] = {"cursor": page.end_cursor, "last_found": state.last_found + len(rows),
                                     "found": state.found + len(rows), "error": None, "last_polled_at": now}
        if done:
            values.update(bookmark=state.pass_until, pass_until=None, cursor=None, due_at=now + every)
        _save(engine, lease, state, lease_seconds, now=now, rows=rows, **values)
        queued += len(rows)
        if done:
            break
    return queued


def poll_failed(engine: Engine, lease: Lease, state: PollState, reason: str, *, now: datetime, retry_in: timedelta,
                lease_seconds: float) -> None:
    _save(engine, lease, state, lease_seconds, now=now, error=reason[:2000], due_at=now + retry_in)


def _save(engine: Engine, lease: Lease, state: PollState, lease_seconds: float, *, now: datetime,
          rows: Sequence[dict[str, object]] = (), **values: object) -> None:
    with unit_of_work(engine) as session:
        insert_new(session, InboxEntry, list(rows), ["shop_domain", "event_id"])
        session.execute(sa.update(PollState).where(col(PollState.id) == state.id).values(**values))
        fence(session, lease, now=now, seconds=lease_seconds)
    for name, value in values.items():
        setattr(state, name, value)



# --- the count report: Shopify, the connector and Brevo side by side ---------------------------------------

SHOWN_IDS = 20  # differences listed by id per resource (all are counted)


@dataclass
class Line:
    """One resource (or Brevo's contacts) across the three places, and the ids that differ."""

    name: str
    shopify: int | None  # None: not asked of Shopify, or Shopify gave no exact count
    connector: int
    brevo: int | None = None
    brevo_expected: int | None = None  # what the connector has delivered there
    missing: list[str] = field(default_factory=list)  # in Shopify (or delivered) and not in the next place
    extra: list[str] = field(default_factory=list)  # in the connector (or Brevo) and not where it comes from

    @property
    def agrees(self) -> bool:
        return (not self.missing and not self.extra and (self.shopify is None or self.shopify == self.connector)
                and (self.brevo is None or self.brevo_expected is None or self.brevo == self.brevo_expected))


def _mirror_ids(session: Session, resource: str, shop_id: int) -> set[int]:
    """The objects the connector holds that Shopify counts: not deleted; checkouts not completed."""
    table: Any = {"customers": Customer, "orders": Order, "products": Product, "checkouts": Checkout}[resource]
    key = {"customers": "customer_id", "orders": "order_id", "products": "product_id", "checkouts": "checkout_id"}
    query = sa.select(getattr(table, key[resource])).where(table.shop_id == shop_id)
    if resource in ("customers", "products"):
        query = query.where(sa.not_(table.deleted))
    if resource == "checkouts":
        query = query.where(table.completed_at.is_(None))
    return set(session.execute(query).scalars())


def shopify_ids(client: ShopifyClient, resources: Sequence[str], *, poll_seconds: float = 1.0,
                sleep: Callable[[float], None] = time.sleep, timeout_seconds: float = 3600) -> dict[str, set[int]]:
    """Every id Shopify holds of each resource, through one bulk query each (run side by side), the files
    streamed: a shop's whole id list costs a few queries instead of thousands of pages."""
    started = {name: client.run_bulk_query(f"{{ {RESOURCES[name].root} {{ edges {{ node {{ id }} }} }} }}")
               for name in resources}
    found: dict[str, set[int]] = {}
    deadline = time.monotonic() + timeout_seconds
    for name, operation in started.items():
        status = client.wait_bulk(operation, deadline=deadline, poll_seconds=poll_seconds, sleep=sleep)
        if status.status != "COMPLETED":
            raise ShopifyRejected(f"Shopify's id query for {name} ended {status.status} ({status.error_code})")
        ids: set[int] = set()
        for _, raw in client.bulk_lines(status.url) if status.url else ():
            row = json.loads(raw)
            ident = legacy_id(row.get("id"))
            if ident is not None and "__parentId" not in row:
                ids.add(ident)
        found[name] = ids
    return found


def _identity(body: dict[str, Any] | None) -> str | None:
    """How a contact is known in Brevo: its email, else its SMS number."""
    body = body or {}
    email = body.get("email")
    sms = (body.get("attributes") or {}).get("SMS")
    return str(email).lower() if email else (str(sms) if sms else None)


def count_report(engine: Engine, domain: str, shopify: ShopifyClient | None, brevo: BrevoClient | None, *,
                 resources: Sequence[str] = POLLED, ids: bool = True, poll_seconds: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> list[Line]:
    """Per resource: Shopify's count, the connector's, and for contacts and orders Brevo's; with `ids`, the
    ids in one place and not the next. A gap here is data lost on the way, whatever any run reported."""
    with unit_of_work(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
        if shop is None:
            raise ValueError(f"no shop {domain}: add it with `connector shops add` first")
        shop_id = shop.id or 0
        mirror = {name: _mirror_ids(session, name, shop_id) for name in resources}
        contacts = {key: _identity(sent) for key, sent in session.execute(
            sa.select(col(Contact.contact_key), col(Contact.sent)).where(
                col(Contact.shop_id) == shop_id, col(Contact.sent).is_not(None))).tuples()}
        order_keys = session.execute(sa.select(col(OutboxEntry.idempotency_key)).where(
            col(OutboxEntry.shop_id) == shop_id, col(OutboxEntry.event_name) == BREVO_ORDER,
            col(OutboxEntry.status) == "delivered")).scalars().all()
        list_id = shop.brevo_list_id
    sent_orders = {key.split(":")[-2] for key in order_keys}
    in_shopify = shopify_ids(shopify, resources, poll_seconds=poll_seconds, sleep=sleep) if shopify and ids else {}
    lines = []
    for name in resources:
        counted = shopify.count(RESOURCES[name]) if shopify else None
        line = Line(name, counted if counted is not None else (len(in_shopify[name]) if name in in_shopify
                                                                 else None), len(mirror[name]))
        if name in in_shopify:
            line.missing = [str(i) for i in sorted(in_shopify[name] - mirror[name])]
            line.extra = [str(i) for i in sorted(mirror[name] - in_shopify[name])]
        if name == "orders" and brevo is not None:
            line.brevo, line.brevo_expected = brevo.order_count(), len(sent_orders)
        lines.append(line)
    if brevo is not None and list_id is not None:
        line = Line("contacts", None, len(contacts), brevo_expected=len(contacts))
        members: set[str] = set()
        offset = 0
        while True:
            page, total = brevo.list_members(list_id, offset=offset)
            for member in page:
                found = _identity({"email": member.get("email"), "attributes": member.get("attributes")})
                if found:
                    members.add(found)
            offset += len(page)
            if not page or offset >= total:
                break
        line.brevo = offset
        if ids:
            line.missing = sorted(key for key, identity in contacts.items() if identity not in members)
            known = set(contacts.values())
            line.extra = sorted(m for m in members if m not in known)
        lines.append(line)
    return lines
