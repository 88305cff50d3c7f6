"""The profile builder: a dirty contact's mirror rows -> the Brevo contact body; unchanged hash -> nothing to send."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import SQLModel, col

from connector.clock import as_utc
from connector.database import chunked, commit_without_waiting, one_of, update_many
from connector.models import Cart, Checkout, Contact, Customer, Order, OrderLine, Product, Refund, Shop, update_row
from loyalty import program as lp
from loyalty.store import append_many, stored_entries
from mappings import events as ev
from mappings.lifecycle import CheckoutFacts, Moment, due_between, moments_for, next_due
from mappings.profile import (
    TENTH,
    BuyerFacts,
    ConsentSent,
    LineFacts,
    OpenCart,
    OrderFacts,
    ProductFacts,
    Profile,
    body_hash,
    brevo_attributes,
    build_profile,
    consent_fields,
    contact_body,
)
from mappings.rfm import VIP_SEGMENT, RfmInput, RfmScore, RfmThresholds, score
from mappings.shop_config import ShopConfig
from sync.apply import insert_events
from sync.helper import Helper, helper_engine
from sync.loyalty import (
    LoyaltyContext,
    LoyaltyView,
    evaluate,
    loyalty_attributes,
    loyalty_events,
    open_requests,
    program_facts,
    request_reward,
)

OPTED_OUT = {"unsubscribed", "redacted", "invalid"}
SEGMENT_CHANGED = "segment_changed"
VIP_ENTERED = "vip_entered"


def _opted_out(state: str | None) -> bool | None:
    if state is None:
        return None
    return state in OPTED_OUT


@dataclass(frozen=True, kw_only=True)
class ShopContext:
    """What the builder needs to know of the shop: its settings and its shop-wide figures."""

    shop_id: int
    domain: str
    currency: str | None
    config: ShopConfig
    thresholds: RfmThresholds | None
    median_days: Decimal | None
    now: datetime
    loyalty: LoyaltyContext
    freshness: timedelta = timedelta(hours=24)  # a moment further back than this is history, not a trigger

    @classmethod
    def of(cls, shop: Shop, now: datetime, *, freshness_hours: float = 24.0) -> ShopContext:
        assert shop.id is not None
        return cls(shop_id=shop.id, domain=shop.domain, currency=shop.currency,
                   config=ShopConfig.from_dict(shop.config),
                   thresholds=RfmThresholds.from_json(shop.rfm_thresholds) if shop.rfm_thresholds else None,
                   median_days=shop.median_days_between.quantize(TENTH) if shop.median_days_between is not None
                   else None, now=now, loyalty=LoyaltyContext.of(shop, now),
                   freshness=timedelta(hours=freshness_hours))



@dataclass(frozen=True, kw_only=True)
class BuyerView:
    """One buyer as the builder saw them: enough for `connector contacts explain`."""

    buyer: BuyerFacts
    orders: tuple[OrderFacts, ...]
    products: dict[int, ProductFacts]
    profile: Profile
    rfm: RfmScore | None
    attributes: dict[str, Any]
    moments: tuple[Moment, ...]
    loyalty: LoyaltyView | None = None


def build_dirty_contacts(session: Session, shop: ShopContext, *, limit: int = 500, live_only: bool = False,
                         helper: Helper | None = None, ahead: Lookahead | None = None) -> int:
    """Recompute up to `limit` dirty contacts of one shop (with `live_only`, not those only history made dirty);
    returns how many were looked at. With a helper process, part of a large batch is read and computed there
    (`_views`); with `ahead` too (kept from one batch of a building loop to the next), the helper is handed its
    part of the next batch as soon as it has this one's."""
    where = [col(Contact.shop_id) == shop.shop_id, col(Contact.dirty).is_(True)]
    if live_only:
        where.append(col(Contact.history).is_(False))
    contacts: Sequence[Contact] = session.execute(sa.select(Contact).where(*where).limit(limit)).scalars().all()
    upcoming: list[_Contact] = []
    if helper is not None and not helper.broken and ahead is not None and len(contacts) == limit:
        # The next batch, as the next call will read it once this one is settled: the same query, its rows after
        # this batch's, read before anything of this one is written. Whatever the next call reads instead is
        # worked out by the worker (`_views`).
        rows = session.execute(sa.select(col(Contact.merged_into), *(col(getattr(Contact, f)) for f in _CONTACT))
                               .where(*where).offset(limit).limit(limit)).tuples()
        upcoming = [_Contact(*row) for merged_into, *row in rows if not merged_into]
    merged = [c for c in contacts if c.merged_into]
    for contact in merged:  # a guest merged into a customer is nobody of their own any more
        contact.dirty, contact.lifecycle_due_at = False, None
    contacts = [c for c in contacts if not c.merged_into]
    if not contacts:
        return len(merged)
    facts: list[ev.EventFact] = []
    ledger: list[tuple[str, lp.Entry]] = []
    views = _views(session, shop, contacts, helper, ahead, upcoming)
    rules = shop.loyalty.rules
    waiting = open_requests(session, shop.shop_id, [c.contact_key for c in contacts]) \
        if rules.enabled and rules.reward_automatic else set()
    settled: list[dict[str, Any]] = []
    rewarded = False
    for contact, view in views:
        facts.extend(_settle(shop, contact, view, ledger))
        # Every contact writes the same columns, in one `update_many` for the batch (not the session's flush).
        settled.append({"shop_id": contact.shop_id, "contact_key": contact.contact_key,
                        **{name: getattr(contact, name) for name in _SETTLED}})
        if (view.loyalty is not None and rules.reward_automatic and contact.contact_key not in waiting
                and view.loyalty.state.balance >= rules.reward_every_points):
            request_reward(session, shop.shop_id, contact.contact_key, rules, source="automatic", now=shop.now)
            rewarded = True
    for contact in contacts:
        session.expunge(contact)  # written below: the session has nothing of theirs left to flush
    update_many(session, Contact.__table__, settled, ("shop_id", "contact_key"))  # type: ignore[attr-defined]
    append_many(session, shop.shop_id, ledger, now=shop.now)
    insert_events(session, shop.shop_id, facts, now=shop.now, enabled=shop.config.event_enabled)
    if not rewarded:
        # Lost in a crash, these buyers are dirty again and built again, their events and ledger entries with
        # them; a reward's code is created in Shopify from its request alone, so a batch that requested one waits.
        commit_without_waiting(session)
    return len(contacts)


SPLIT_AT = 100  # a batch of at least so many buyers is shared with the helper process, if there is one
# The helper's first share (then learnt: `Helper.balance`): it also sends its part, and what it read, across
# (measured at 20,000 customers, an even split left the worker waiting for it about a quarter of the time).
HELPER_SHARE = 0.45


@dataclass(frozen=True)
class _Contact:
    """What `load_buyers` reads of a contact, as it crosses to the helper process."""

    contact_key: str
    customer_id: int | None
    email: str | None
    phone: str | None
    first_name: str | None
    last_name: str | None


_CONTACT = tuple(f.name for f in fields(_Contact))


@dataclass(frozen=True)
class _Part:
    """A part of a batch handed to the helper: its contacts, the phone numbers' owners it was given, its views."""

    keys: frozenset[str]
    owners: dict[str, str]
    future: Future[list[BuyerView]] | None


class Lookahead:
    """The helper's part of a building loop's next batch, handed to it with the current batch's part: while the
    worker settles and writes a batch (about a quarter of building), the helper works on the next one instead of
    waiting for it.

    Worked out before the current batch is settled, it is what the worker would read after: settling a buyer
    writes that buyer's own row, ledger and events, none of which another buyer's view reads, except the phone
    numbers' owners, which the worker works out again for the batch and compares (`_views`)."""

    def __init__(self) -> None:
        self.part: _Part | None = None
        self.figures: tuple[list[str], Future[list[dict[str, Any]]] | None] | None = None  # its keys, their figures


def _views(session: Session, shop: ShopContext, contacts: Sequence[Contact], helper: Helper | None,
           ahead: Lookahead | None = None, upcoming: Sequence[_Contact] = ()) -> Iterator[tuple[Contact, BuyerView]]:
    """Each contact with its `load_buyers` view. With a helper process and a large batch, a part of it is read
    and computed in the helper, on its own connection, while the worker does the rest, and settles it: on two
    cores a backfill's buyers are then built in about three quarters of the time (measured at 100,000
    customers on SQLite: 69 s instead of 91 s). With `ahead`, that part was handed to the helper with the
    previous batch's (when it is still the part the batch holds, and its phone owners have not changed), and
    the helper's part of `upcoming` is handed to it now, to start once this one is done.

    The helper reads what the worker would: on SQLite the worker's unit of work holds the write lock from its
    first statement, so nothing is committed between the two reads, and no reader sees what the worker writes
    until it commits (the helper's views are of the batch as it was before any of it was settled, as the
    worker's own are); on PostgreSQL each statement reads what is committed, in the worker as in the helper.
    The phone numbers' owners, which depend on the whole batch, are worked out here, once, for both parts. The
    views come back without the orders and products they were computed from (settling does not read them)."""
    part = ahead.part if ahead is not None else None
    if ahead is not None:
        ahead.part = None
    if helper is None or len(contacts) < SPLIT_AT:
        _drop(part)
        return zip(contacts, load_buyers(session, shop, contacts), strict=True)
    owners = batch_phone_owners(session, shop.shop_id, contacts)
    if part is not None and not all(owners.get(phone, owner) == owner for phone, owner in part.owners.items()):
        _drop(part)  # a number's owner moved with the batch before: worked out again
        part = None
    if part is None:
        part = _hand_over(helper, shop, _helpers_part(helper, "views", contacts), owners)
    if ahead is not None and len(upcoming) >= SPLIT_AT:
        ahead.part = _hand_over(helper, shop, _helpers_part(helper, "views", upcoming),
                                batch_phone_owners(session, shop.shop_id, cast(Sequence[Contact], upcoming)))
    mine = [c for c in contacts if c.contact_key not in part.keys]
    theirs = [c for c in contacts if c.contact_key in part.keys]
    views = load_buyers(session, shop, mine, owners=owners)
    if not theirs:  # what the helper was handed is not in this batch after all
        _drop(part)
        return zip(mine, views, strict=True)

    def rest() -> list[BuyerView]:
        helper.balance("views", part.future)
        done = helper.result(part.future)
        if done is None:
            return load_buyers(session, shop, theirs, owners=owners)
        by_key = {view.buyer.contact_key: view for view in done}
        return [by_key[c.contact_key] for c in theirs]

    return _then(zip(mine, views, strict=True), theirs, rest)


def _drop(part: _Part | None) -> None:
    if part is not None:
        _cancel(part.future)


def _cancel(future: Future[Any] | None) -> None:
    """Work handed to the helper that will not be used: cancelled, so that the helper does not do it if it has not
    begun (and then keep the worker waiting for what it is handed next)."""
    if future is not None:
        future.cancel()


T = TypeVar("T")


def _helpers_part(helper: Helper, work: str, batch: Sequence[T]) -> list[T]:
    """The part of a batch of `work` the helper takes: its last ones, as many as its learnt share."""
    return list(batch[len(batch) - int(len(batch) * helper.share(work, HELPER_SHARE)):])


def _hand_over(helper: Helper, shop: ShopContext, contacts: Sequence[Contact | _Contact], owners: dict[str, str]
               ) -> _Part:
    theirs = [_Contact(*(getattr(c, f) for f in _CONTACT)) for c in contacts]
    return _Part(frozenset(c.contact_key for c in theirs), owners, helper.submit(helper_views, shop, theirs, owners))


def _then(first: Iterable[tuple[Contact, BuyerView]], then: Sequence[Contact], rest: Callable[[], list[BuyerView]]
          ) -> Iterator[tuple[Contact, BuyerView]]:
    """`first`, then `then` with the views `rest` returns, called only once `first` is used up."""
    yield from first
    yield from zip(then, rest(), strict=True)


def helper_views(shop: ShopContext, contacts: Sequence[_Contact], owners: dict[str, str]) -> list[BuyerView]:
    """In the helper process: `load_buyers` of these contacts, slimmed for the trip back (`for_settling`)."""
    with Session(helper_engine()) as session:
        views = load_buyers(session, shop, cast(Sequence[Contact], contacts), owners=owners)
    return [for_settling(view, shop) for view in views]


def for_settling(view: BuyerView, shop: ShopContext) -> BuyerView:
    """The view with only what `_settle` reads: without the orders and products it was computed from, the ledger
    the buyer is owed (settling appends the new entries), and the moments due no later than the freshness window's
    start (settling emits those due after the later of that start and the last scan, and keeps the next one due
    after now). Half of what the views of a backfill's buyers cost the worker to receive from the helper process
    was their moments, each with its products' titles, links and images."""
    since = shop.now - shop.freshness
    return replace(view, orders=(), products={}, moments=tuple(m for m in view.moments if m.due_at > since),
                   loyalty=None if view.loyalty is None else replace(view.loyalty, owed=()))


def batch_phone_owners(session: Session, shop_id: int, contacts: Sequence[Contact]) -> dict[str, str]:
    """`_phone_owners` of a batch of contacts: each contact's number is its customer's, else its own."""
    ids = [c.customer_id for c in contacts if c.customer_id]
    phones: dict[int, str | None] = {}
    for chunk in chunked(ids):
        phones.update((customer_id, phone) for customer_id, phone in session.connection().execute(sa.select(
            col(Customer.customer_id), col(Customer.phone)).where(
            col(Customer.shop_id) == shop_id, one_of(col(Customer.customer_id), chunk, session))))
    return _phone_owners(session, shop_id, {
        c.contact_key: (phones.get(c.customer_id) if c.customer_id else None) or c.phone for c in contacts})


def settle_history_figures(session: Session, shop: ShopContext, *, after: str = "", limit: int = 2000,
                           helper: Helper | None = None, ahead: Lookahead | None = None) -> str | None:
    """Store the figures the shop-wide RFM step reads (order count, total spent, last order, cadence) of up to
    `limit` contacts that only history made dirty, keyed after `after`, from their orders and refunds alone (the
    builder's own `build_profile`; lines, products and the rest are not needed for them). Returns the last key
    settled, None when there was none. With a helper process, part of them is worked out there (as in `_views`);
    with `ahead` too, the helper is handed its part of the next batch with this one's (storing a contact's
    figures changes nothing another's are worked out from).

    Once a backfill is applied, this lets the RFM thresholds be computed before the builder runs, so that each
    buyer is built once, with their score, instead of once without it and again when the scores appear."""
    found = list(session.execute(sa.select(col(Contact.contact_key)).where(
        col(Contact.shop_id) == shop.shop_id, col(Contact.dirty).is_(True), col(Contact.history).is_(True),
        col(Contact.merged_into).is_(None), col(Contact.contact_key) > after)
        .order_by(col(Contact.contact_key))
        .limit(2 * limit if ahead is not None and helper is not None and not helper.broken else limit)).scalars())
    keys, upcoming = found[:limit], found[limit:]
    if not keys:
        return None
    part = ahead.figures if ahead is not None else None
    if ahead is not None:
        ahead.figures = None
    if helper is None or len(keys) < SPLIT_AT:
        _cancel(part[1] if part is not None else None)
        rows = history_figures(session, shop, keys)
    else:
        if part is None or not set(part[0]) <= set(keys):
            _cancel(part[1] if part is not None else None)  # not this batch's: the helper need not work on it
            now = _helpers_part(helper, "figures", keys)
            part = (now, helper.submit(helper_history_figures, shop, now))
        if ahead is not None and len(upcoming) >= SPLIT_AT:
            later = _helpers_part(helper, "figures", upcoming)
            ahead.figures = (later, helper.submit(helper_history_figures, shop, later))
        theirs, future = part
        taken = set(theirs)
        rows = history_figures(session, shop, [key for key in keys if key not in taken])
        helper.balance("figures", future)
        done = helper.result(future)
        rows += done if done is not None else history_figures(session, shop, theirs)
    update_many(session, Contact.__table__, [  # type: ignore[attr-defined]
        {"shop_id": shop.shop_id, **row} for row in rows], ("shop_id", "contact_key"))
    return keys[-1]


# What `history_figures` reads of each order: what `_order_facts` takes of it without its lines, 13 of the row's
# 36 columns (measured on 10,000 buyers' 51,000 orders, SQLite: 1.15 s instead of 1.40 s).
_FIGURE_COLUMNS = ("order_id", "contact_key", "name", "created_at_src", "cancelled_at", "test", "total", "currency",
                   "total_discounts", "discount_codes", "subscription", "rebill", "fulfilled_at")


def history_figures(session: Session, shop: ShopContext, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The figures `settle_history_figures` stores, of these contacts (one row each, with its `contact_key`)."""
    orders: dict[str, list[Order]] = defaultdict(list)
    refunded: dict[int, Decimal] = defaultdict(Decimal)
    for chunk in chunked(keys):
        mine = list(_read(session, Order, col(Order.shop_id) == shop.shop_id,
                          one_of(col(Order.contact_key), chunk, session), columns=_FIGURE_COLUMNS))
        for order in mine:
            orders[order.contact_key or ""].append(order)
        for ids in chunked(o.order_id for o in mine):
            for order_id, amount in session.connection().execute(sa.select(
                    col(Refund.order_id), col(Refund.amount)).where(
                    col(Refund.shop_id) == shop.shop_id, one_of(col(Refund.order_id), ids, session))).tuples():
                refunded[order_id] += amount
    rows = []
    for key in keys:
        profile = build_profile(tuple(_order_facts(o, (), refunded, {}) for o in orders.get(key, ())),
                                shop.currency, count_test_orders=shop.config.lifecycle.count_test_orders)
        rows.append({"contact_key": key, "order_count": profile.order_count, "total_spent": profile.total_spent,
                     "last_order_at": profile.last_order_at, "days_between_orders": profile.days_between_orders})
    return rows


def helper_history_figures(shop: ShopContext, keys: Sequence[str]) -> list[dict[str, Any]]:
    """In the helper process: `history_figures` of these contacts, read on its own connection."""
    with Session(helper_engine()) as session:
        return history_figures(session, shop, keys)


def _phone_owners(session: Session, shop_id: int, phones: Mapping[str, str | None]) -> dict[str, str]:
    """Which contact of the shop owns each phone number: a customer before a guest, then the earliest.
    Two buyers giving the same number (a guest and a customer, a shared household phone) would otherwise be
    merged by Brevo into one contact, or refused."""
    wanted = sorted({p for p in phones.values() if p})
    if not wanted:
        return {}
    holders: dict[str, list[tuple[bool, datetime, str]]] = defaultdict(list)
    for chunk in chunked(wanted):
        for key, phone, customer_id, created in session.execute(sa.select(
                col(Contact.contact_key), col(Contact.phone), col(Contact.customer_id), col(Contact.created_at))
                .where(col(Contact.shop_id) == shop_id, one_of(col(Contact.phone), chunk, session),
                       col(Contact.merged_into).is_(None))).tuples():
            if phone:
                holders[phone].append((customer_id is None, as_utc(created) or _EPOCH, key))
        for customer_id, phone in session.execute(sa.select(col(Customer.customer_id), col(Customer.phone)).where(
                col(Customer.shop_id) == shop_id, one_of(col(Customer.phone), chunk, session),
                sa.not_(col(Customer.deleted)))).tuples():
            if phone:
                holders[phone].append((False, _EPOCH, f"c:{customer_id}"))
    for key, phone in phones.items():  # the contacts being built hold their own number too
        if phone and not any(k == key for _, _, k in holders[phone]):
            holders[phone].append((not key.startswith("c:"), _EPOCH, key))
    return {phone: min(found)[2] for phone, found in holders.items() if found}


M = TypeVar("M", bound=SQLModel)


def _read(session: Session, model: type[M], *where: Any, columns: Sequence[str] = ()) -> Iterator[M]:
    """The model's rows matching `where`, for reading only: plain rows, whose attributes are the model's, instead
    of ORM objects, which cost several times more to load (the type says what they stand for). With `columns`,
    only those: each column read is converted to its type, and a reader that needs few need not pay for all.

    Read on the session's connection, not through the session: the ORM's own loading of plain columns costs a
    fifth to a third more per row than the connection's (measured on 100,000 orders, SQLite), and these tables
    hold nothing the session has yet to write (the builder changes contacts, which it does not read here)."""
    table = model.__table__  # type: ignore[attr-defined]
    rows = session.connection().execute(sa.select(*(table.c[c] for c in columns) if columns else table.columns)
                                        .where(*where))
    return cast(Iterator[M], iter(rows))


def load_buyers(session: Session, shop: ShopContext, contacts: Sequence[Contact], *,
                owners: Mapping[str, str] | None = None) -> list[BuyerView]:
    """Each contact's mirror rows -> profile, RFM score, attributes and lifecycle moments (a few queries).
    `owners`: the phone numbers' owners (`batch_phone_owners`), when worked out for a larger batch."""
    shop_id = shop.shop_id
    keys = [c.contact_key for c in contacts]
    customer_ids = [c.customer_id for c in contacts if c.customer_id]
    customers = {c.customer_id: c for c in _read(
        session, Customer, col(Customer.shop_id) == shop_id, one_of(col(Customer.customer_id), customer_ids, session)
    )} if customer_ids else {}
    orders: dict[str, list[Order]] = defaultdict(list)
    for order in _read(session, Order, col(Order.shop_id) == shop_id, one_of(col(Order.contact_key), keys, session)):
        orders[order.contact_key or ""].append(order)
    order_ids = [o.order_id for os in orders.values() for o in os]
    refunded: dict[int, Decimal] = defaultdict(Decimal)
    refunded_units: dict[tuple[int, int], int] = defaultdict(int)
    refunds: dict[int, list[Refund]] = defaultdict(list)
    lines: dict[int, list[OrderLine]] = defaultdict(list)
    for chunk in chunked(order_ids):
        for refund in _read(session, Refund, col(Refund.shop_id) == shop_id,
                            one_of(col(Refund.order_id), chunk, session)):
            refunded[refund.order_id] += refund.amount
            refunds[refund.order_id].append(refund)
            for item in refund.lines or []:
                refunded_units[(refund.order_id, int(item["line_item_id"]))] += int(item["quantity"])
        for line in _read(session, OrderLine, col(OrderLine.shop_id) == shop_id,
                          one_of(col(OrderLine.order_id), chunk, session)):
            lines[line.order_id].append(line)
    product_ids = {li.product_id for ls in lines.values() for li in ls if li.product_id}
    checkouts = _open_checkouts(session, shop_id, keys)
    product_ids |= {int(li["product_id"]) for c in checkouts.values() for li in c.lines or [] if li.get("product_id")}
    products = _products(session, shop, product_ids)
    carts = _open_carts(session, shop_id, checkouts)
    life = shop.config.lifecycle
    program = shop.loyalty
    ledgers = stored_entries(session, shop_id, keys) if program.rules.enabled else {}
    if owners is None:
        owners = batch_phone_owners(session, shop_id, contacts)
    views = []
    for contact in contacts:
        customer = customers.get(contact.customer_id) if contact.customer_id else None
        mine = orders.get(contact.contact_key, [])
        phone = (customer.phone if customer else None) or contact.phone
        facts = tuple(_order_facts(o, lines.get(o.order_id, []), refunded, refunded_units) for o in mine)
        latest = max(mine, key=lambda o: (as_utc(o.created_at_src) or _EPOCH, o.order_id), default=None)
        buyer = BuyerFacts(
            contact_key=contact.contact_key,
            customer_id=contact.customer_id,
            email=(customer.email if customer else None) or contact.email,
            # Brevo keeps a phone number on one contact: the number's owner carries it, the others go without.
            phone=phone if phone is None or owners.get(phone, contact.contact_key) == contact.contact_key else None,
            first_name=(customer.first_name if customer else None) or contact.first_name,
            last_name=(customer.last_name if customer else None) or contact.last_name,
            email_opted_out=_opted_out(customer.email_consent) if customer else None,
            sms_opted_out=_opted_out(customer.sms_consent) if customer else None,
            shop_currency=shop.currency or (latest.currency if latest else None),
            sms_subscribed=bool(customer and customer.sms_consent == "subscribed"),
            tags=customer.tags if customer else None,
            country_code=(customer.country_code if customer else None) or (latest.country_code if latest else None),
            city=(customer.city if customer else None) or (latest.city if latest else None),
            locale=(customer.locale if customer else None) or (latest.locale if latest else None),
        )
        profile = build_profile(facts, buyer.shop_currency, products=products, shop_median_days=shop.median_days,
                                count_test_orders=life.count_test_orders)
        rfm = None
        if shop.thresholds is not None and profile.order_count and profile.last_order_at is not None:
            rfm = score(RfmInput(last_order_at=profile.last_order_at, order_count=profile.order_count,
                                 total_spent=profile.total_spent), shop.thresholds, shop.now)
        attributes = brevo_attributes(buyer, profile, carts.get(contact.contact_key),
                                      (rfm.code, rfm.segment) if rfm else None)
        loyalty = None
        if program.rules.enabled:
            stored = ledgers.get(contact.contact_key, [])
            loyalty = evaluate(program_facts(customer, mine, refunds, stored), stored, program, now=shop.now,
                               orders=mine, refunds=refunds)
            attributes.update(loyalty_attributes(loyalty))
        checkout = checkouts.get(contact.contact_key)
        moments = moments_for(contact.contact_key, profile=profile, orders=facts, products=products,
                              checkout=_checkout_facts(checkout, products, shop) if checkout else None,
                              birthday=customer.birthday if customer else None, delays=shop.config.lifecycle,
                              now=shop.now)
        views.append(BuyerView(buyer=buyer, orders=facts, products=products, profile=profile, rfm=rfm,
                               attributes=attributes, moments=tuple(moments), loyalty=loyalty))
    return views


_SETTLED = ("dirty", "history", "email", "phone", "order_count", "total_spent", "last_order_at", "days_between_orders",
            "created_at", "rfm_score", "rfm_segment", "lifecycle_scanned_at", "lifecycle_due_at", "pending",
            "pending_hash", "push_state", "attempts", "next_attempt_at", "loyalty_tier", "loyalty_rules_at")


def _settle(shop: ShopContext, contact: Contact, view: BuyerView, ledger: list[tuple[str, lp.Entry]]
            ) -> list[ev.EventFact]:
    """Store the figures, queue the Brevo body when it changed; returns the events that fell due and adds
    the buyer's new ledger entries to `ledger`."""
    buyer, profile, rfm = view.buyer, view.profile, view.rfm
    catching_up = contact.history  # only history changed: segment moves and ledger corrections are not news
    armed = as_utc(contact.created_at) or shop.now
    # Through `update_row`: SQLModel's own setter sends each value through pydantic as well.
    update_row(contact, {"dirty": False, "history": False, "email": buyer.email, "phone": buyer.phone,
                         "order_count": profile.order_count, "total_spent": profile.total_spent,
                         "last_order_at": profile.last_order_at, "days_between_orders": profile.days_between_orders,
                         "created_at": armed})
    facts: list[ev.EventFact] = []
    identity = _event_buyer(buyer)
    previous_segment = contact.rfm_segment
    update_row(contact, {"rfm_score": rfm.code if rfm else None, "rfm_segment": rfm.segment if rfm else None})
    if (identity is not None and rfm is not None and previous_segment and previous_segment != rfm.segment
            and not catching_up):
        props = {"from": previous_segment, "to": rfm.segment, "rfm_score": rfm.code}
        day = shop.now.date().isoformat()
        facts.append(ev.lifecycle_event(SEGMENT_CHANGED, f"{shop.domain}:{SEGMENT_CHANGED}:{contact.contact_key}:"
                                        f"{rfm.segment}:{day}", identity, shop.now, props))
        if rfm.segment == VIP_SEGMENT and buyer.can_be_marketed:
            facts.append(ev.lifecycle_event(VIP_ENTERED, f"{shop.domain}:{VIP_ENTERED}:{contact.contact_key}:{day}",
                                            identity, shop.now, props))
    after = max(as_utc(contact.lifecycle_scanned_at) or armed, armed, shop.now - shop.freshness)
    if identity is not None and buyer.can_be_marketed:
        for moment in due_between(view.moments, after, shop.now):
            facts.append(ev.lifecycle_event(moment.name, f"{shop.domain}:{moment.key}", identity, moment.due_at,
                                            moment.properties))
    scanned = max(after, shop.now)
    update_row(contact, {"lifecycle_scanned_at": scanned, "lifecycle_due_at": next_due(view.moments, scanned)})
    if view.loyalty is not None:
        facts.extend(_settle_loyalty(shop, contact, view.loyalty, identity, buyer.shop_currency, ledger,
                                     catching_up=catching_up))
    if not (buyer.email or buyer.phone):
        return facts  # Brevo needs an email or a phone number to hold a contact
    memory = dict(contact.sent.get("_consent", {})) if contact.sent else {}
    seen = ConsentSent(email_blacklisted=memory.get("shopify_email"), sms_blacklisted=memory.get("shopify_sms"))
    told = ConsentSent(email_blacklisted=memory.get("told_email"), sms_blacklisted=memory.get("told_sms"))
    body = contact_body(buyer, shop.config.apply(view.attributes), consent_fields(buyer, seen, told))
    if shop.config.segment_lists:  # membership follows the segment; leaving a list is pushed too
        body["listIds"] = sorted(list_id for segment, list_id in shop.config.segment_lists.items()
                                 if rfm is not None and segment == rfm.segment)
    consent_memory = {"shopify_email": buyer.email_opted_out, "shopify_sms": buyer.sms_opted_out,
                      "told_email": body.get("emailBlacklisted", told.email_blacklisted),
                      "told_sms": body.get("smsBlacklisted", told.sms_blacklisted)}
    # Hashed without the blacklist flags: a flag goes out once, as a change of its own, and the next build of the
    # same buyer, which leaves it out, is the same contact, not a change to send again.
    consent = {"emailBlacklisted", "smsBlacklisted"} & body.keys()
    digest = body_hash({name: value for name, value in body.items() if name not in consent})
    if not consent and digest in (contact.sent_hash, contact.pending_hash):
        return facts
    body["_consent"] = consent_memory
    update_row(contact, {"pending": body, "pending_hash": digest, "push_state": "pending", "attempts": 0,
                         "next_attempt_at": None})
    return facts


def _settle_loyalty(shop: ShopContext, contact: Contact, loyalty: LoyaltyView, identity: ev.Buyer | None,
                    currency: str | None, ledger: list[tuple[str, lp.Entry]], *, catching_up: bool = False
                    ) -> list[ev.EventFact]:
    """New ledger entries, the tier announced, and the next moment the program needs this buyer again.

    A build under rules the contact was not yet computed with (the program just started, or its rules
    changed) is a recompute: the ledger is corrected silently and the tier it lands in is not news.
    """
    program = shop.loyalty
    # Catching up with history corrects the ledger silently too (an expiry moved by an older order learnt now).
    recomputing = as_utc(contact.loyalty_rules_at) != program.rules_at or catching_up
    ledger.extend((contact.contact_key, entry) for entry in loyalty.new)
    facts: list[ev.EventFact] = []
    if identity is not None:
        facts = loyalty_events(loyalty, shop_domain=shop.domain, buyer=identity, previous_tier=contact.loyalty_tier,
                               recomputing=recomputing, since=max(shop.now - shop.freshness, program.rules_at),
                               now=shop.now, rules=program.rules, currency=currency)
    update_row(contact, {"loyalty_tier": loyalty.state.tier.name, "loyalty_rules_at": program.rules_at})
    if loyalty.next_at is not None and (contact.lifecycle_due_at is None
                                        or loyalty.next_at < as_utc(contact.lifecycle_due_at)):  # type: ignore[operator]
        contact.lifecycle_due_at = loyalty.next_at
    return facts


def _event_buyer(buyer: BuyerFacts) -> ev.Buyer | None:
    if not (buyer.email or buyer.phone or buyer.customer_id):
        return None
    return ev.Buyer(contact_key=buyer.contact_key, customer_id=buyer.customer_id, email=buyer.email,
                    phone=buyer.phone)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _order_facts(order: Order, lines: Sequence[OrderLine], refunded: Mapping[int, Decimal],
                 refunded_units: Mapping[tuple[int, int], int]) -> OrderFacts:
    return OrderFacts(
        order_id=order.order_id, name=order.name, created_at=as_utc(order.created_at_src),
        cancelled_at=as_utc(order.cancelled_at), test=order.test, total=order.total,
        refunded=refunded.get(order.order_id, Decimal("0")), currency=order.currency,
        lines=tuple(LineFacts(product_id=li.product_id, title=li.title, vendor=li.vendor, quantity=li.quantity,
                              refunded_quantity=refunded_units.get((order.order_id, li.line_id), 0), price=li.price)
                    for li in sorted(lines, key=lambda li: li.line_id)),
        discounted=order.total_discounts > 0 or bool(order.discount_codes),
        subscription=order.subscription, rebill=order.rebill, fulfilled_at=as_utc(order.fulfilled_at))


def _products(session: Session, shop: ShopContext, ids: set[int]) -> dict[int, ProductFacts]:
    found: dict[int, ProductFacts] = {}
    for chunk in chunked(ids):
        for p in _read(session, Product, col(Product.shop_id) == shop.shop_id,
                       one_of(col(Product.product_id), chunk, session)):
            found[p.product_id] = ProductFacts(title=p.title, url=ev.product_url(shop.domain, p.handle),
                                               image_url=p.image_url, product_type=p.product_type, vendor=p.vendor,
                                               collections=tuple(p.collections or ()), deleted=p.deleted)
    return found


def _open_checkouts(session: Session, shop_id: int, keys: Sequence[str]) -> dict[str, Checkout]:
    """The newest checkout of each buyer that no order completed."""
    newest: dict[str, Checkout] = {}
    for checkout in _read(session, Checkout, col(Checkout.shop_id) == shop_id,
                          one_of(col(Checkout.contact_key), keys, session), col(Checkout.completed_at).is_(None)):
        key = checkout.contact_key or ""
        current = newest.get(key)
        if current is None or _later(checkout.updated_at_src, current.updated_at_src):
            newest[key] = checkout
    return newest


def _checkout_facts(checkout: Checkout, products: Mapping[int, ProductFacts], shop: ShopContext
                    ) -> CheckoutFacts | None:
    updated = as_utc(checkout.updated_at_src) or as_utc(checkout.created_at_src)
    if updated is None:
        return None
    info: dict[int, ev.ProductInfo] = {}
    for pid in {line.get("product_id") for line in checkout.lines or []}:  # its own, not every product loaded
        p = products.get(pid) if isinstance(pid, int) else None
        if p is not None and isinstance(pid, int):
            info[pid] = ev.ProductInfo(title=p.title, url=p.url if not p.deleted else None,
                                       image_url=p.image_url if not p.deleted else None)
    return CheckoutFacts(checkout_id=checkout.checkout_id,
                         cart_id=checkout.cart_token or checkout.token or str(checkout.checkout_id),
                         updated_at=updated, items=tuple(ev.cart_items(checkout.lines or [], info)),
                         subtotal=ev.money_text(checkout.subtotal), total=ev.money_text(checkout.total),
                         currency=checkout.currency or shop.currency or "", recovery_url=checkout.recovery_url or "")


def _open_carts(session: Session, shop_id: int, newest: Mapping[str, Checkout]) -> dict[str, OpenCart]:
    """Each buyer's open checkout, valued at its cart's latest content."""
    tokens = [c.cart_token for c in newest.values() if c.cart_token]
    carts = {c.token: c for c in _read(session, Cart, col(Cart.shop_id) == shop_id,
                                       one_of(col(Cart.token), tokens, session))} if tokens else {}
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
