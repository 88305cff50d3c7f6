"""What a merchant or operator does to a shop's loyalty program: set its rules, adjust a buyer's points, ask for
a reward code, recompute every ledger from the mirrored history, and look at one buyer's ledger."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.database import unit_of_work
from connector.explain import ExplainError, find_buyer
from connector.models import Contact, Customer, LoyaltyEntry, LoyaltyReward, Money, Order, Refund, Shop
from connector.shops import ShopError, normalise_domain
from loyalty import program as lp
from loyalty.rules import LoyaltyRules
from loyalty.store import append_many, stored_entries
from sync.loyalty import (
    LoyaltyContext,
    LoyaltyView,
    evaluate,
    order_fact,
    program_facts_from,
    record_entry,
    request_reward,
)
from sync.profiles import ShopContext, load_buyers

WRITE_CHUNK = 5000


class LoyaltyAdminError(Exception):
    """The request is refused; the message says why and nothing was changed."""


class NotEnoughPoints(LoyaltyAdminError):
    """The buyer's balance does not cover what was asked."""


def _shop(session: Session, domain: str) -> Shop:
    try:
        domain = normalise_domain(domain)
    except ShopError as exc:
        raise LoyaltyAdminError(str(exc)) from None
    shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
    if shop is None:
        raise LoyaltyAdminError(f"no shop {domain}")
    return shop


def configure_loyalty(engine: Engine, domain: str, text: str, *, now: datetime) -> dict[str, Any]:
    """Validate the rules (TOML) and put them in force; invalid rules raise ConfigError and change nothing.

    The new rules apply to the whole history: every ledger is corrected to what they grant, silently (a rules
    change is not news to buyers), and every contact is rebuilt so Brevo gets the new balances and tiers.
    """
    rules = LoyaltyRules.from_toml(text)
    with unit_of_work(engine) as session:
        shop = _shop(session, domain)
        shop.loyalty_rules, shop.loyalty_rules_at = rules.to_dict(), now
        session.execute(sa.update(Contact).where(col(Contact.shop_id) == shop.id).values(dirty=True))
    return rules.to_dict()


@dataclass(frozen=True)
class BuyerLoyalty:
    shop: Shop
    contact: Contact
    view: LoyaltyView
    ledger: list[lp.Entry]


def buyer_loyalty(engine: Engine, domain: str, who: str, *, now: datetime) -> BuyerLoyalty:
    with unit_of_work(engine) as session:
        shop, contact, view = _buyer_now(session, domain, who, now)
        ledger = stored_entries(session, shop.id or 0, [contact.contact_key]).get(contact.contact_key, [])
        session.expunge_all()
    return BuyerLoyalty(shop=shop, contact=contact, view=view, ledger=[*ledger, *view.new])


def adjust_points(engine: Engine, domain: str, who: str, points: int, reason: str, *, now: datetime
                  ) -> tuple[int, int]:
    """Add (or with a negative number take away) points by hand, with a reason; returns (before, after).

    Refused when it would leave the buyer below zero. The entry and its event commit together.
    """
    if not reason.strip():
        raise LoyaltyAdminError("an adjustment needs a reason")
    if points == 0:
        raise LoyaltyAdminError("an adjustment of 0 points changes nothing")
    with unit_of_work(engine) as session:
        shop, contact, view = _buyer_now(session, domain, who, now)
        balance = view.state.balance
        if balance + points < 0:
            raise NotEnoughPoints(f"{who} has {balance} points: taking {-points} would leave them below zero")
        entry = lp.Entry(f"adjust:{uuid.uuid4().hex[:12]}", points, lp.ADJUSTMENT, now, reason.strip())
        after = record_entry(session, shop, contact, view, entry, now=now)
    return balance, after


def ask_reward(engine: Engine, domain: str, who: str, *, source: str, now: datetime) -> LoyaltyReward:
    """Ask for a reward code for a buyer whose balance covers it; the worker creates it in Shopify."""
    with unit_of_work(engine) as session:
        shop, contact, view = _buyer_now(session, domain, who, now)
        rules = LoyaltyRules.from_dict(shop.loyalty_rules)
        if view.state.balance < rules.reward_every_points:
            raise NotEnoughPoints(f"{who} has {view.state.balance} points; a reward takes "
                                    f"{rules.reward_every_points}")
        reward = request_reward(session, shop.id or 0, contact.contact_key, rules, source=source, now=now)
        assert reward is not None
        session.expunge(reward)
    return reward


def _buyer_now(session: Session, domain: str, who: str, now: datetime) -> tuple[Shop, Contact, LoyaltyView]:
    try:
        shop, contact = find_buyer(session, normalise_domain(domain), who)
    except (ExplainError, ShopError) as exc:
        raise LoyaltyAdminError(str(exc)) from None
    context = ShopContext.of(shop, now)
    if not context.loyalty.rules.enabled:
        raise LoyaltyAdminError(f"the loyalty program of {shop.domain} is switched off")
    [view] = load_buyers(session, context, [contact])
    assert view.loyalty is not None
    return shop, contact, view.loyalty


@dataclass(frozen=True)
class Recomputed:
    buyers: int
    entries: int  # ledger entries written (corrections)
    tiers_changed: int
    seconds: float


def recompute_program(engine: Engine, domain: str, *, now: datetime) -> Recomputed:
    """Bring every buyer's ledger to what the rules grant over the full mirrored history, silently.

    Used on a shop's first day and after a rules change (also reached gradually by the builder, contact by
    contact; this does the whole shop at once). Reads the mirror as plain rows, one pass per table; writes the
    corrections, each contact's tier and the rules it was computed with, and marks every contact to be rebuilt
    so Brevo receives the new figures. No event is produced: history is not news.
    """
    started = time.perf_counter()
    with unit_of_work(engine) as session:
        shop = _shop(session, domain)
        shop_id = shop.id or 0
        context = LoyaltyContext.of(shop, now)
        if not context.rules.enabled:
            raise LoyaltyAdminError(f"the loyalty program of {shop.domain} is switched off")
        conn = session.connection()  # plain rows: no ORM result processing for a whole shop's history
        customers = {r.contact_key: r for r in conn.execute(sa.select(
            col(Customer.contact_key), col(Customer.created_at_src), col(Customer.birthday), col(Customer.deleted))
            .where(col(Customer.shop_id) == shop_id))}
        refunds: dict[int, list[tuple[int, Decimal, datetime | None]]] = defaultdict(list)
        for refund_id, order_id, amount, created in conn.execute(sa.select(
                col(Refund.refund_id), col(Refund.order_id), col(Refund.amount), col(Refund.created_at_src))
                .where(col(Refund.shop_id) == shop_id).order_by(col(Refund.refund_id))).tuples():
            refunds[order_id].append((refund_id, amount, created))
        ledgers = _ledgers(conn, shop_id)
        contacts = {r.contact_key: r.loyalty_tier for r in conn.execute(sa.select(
            col(Contact.contact_key), col(Contact.loyalty_tier)).where(
            col(Contact.shop_id) == shop_id, col(Contact.merged_into).is_(None)))}
        orders = conn.execute(sa.select(
            col(Order.contact_key), col(Order.order_id), col(Order.created_at_src),
            sa.type_coerce(sa.func.coalesce(col(Order.points_basis), col(Order.subtotal)), Money()),
            col(Order.total), col(Order.financial_status), col(Order.cancelled_at), col(Order.test))
            .where(col(Order.shop_id) == shop_id, col(Order.contact_key).is_not(None))
            .order_by(col(Order.contact_key), col(Order.order_id))).tuples().all()
        global _SHARED
        _SHARED = _Shared(groups=list(_grouped(orders, contacts)), customers=customers, refunds=refunds,
                          ledgers=ledgers, contacts=contacts, context=context, now=now)
        del orders
        try:
            results = _compute_all(engine, len(_SHARED.groups))
        finally:
            _SHARED = None
        buyers = sum(n for n, _, _ in results)
        pending = [pair for _, new, _ in results for pair in new]
        tiers = [pair for _, _, changed in results for pair in changed]
        written = 0
        for start in range(0, len(pending), WRITE_CHUNK):
            written += append_many(session, shop_id, pending[start:start + WRITE_CHUNK], now=now)
        if tiers and conn.dialect.name == "postgresql":  # a first day changes every buyer's tier: one statement
            conn.exec_driver_sql(
                "UPDATE contacts c SET loyalty_tier = v.tier FROM unnest(%s::text[], %s::text[]) AS v(k, tier) "
                "WHERE c.shop_id = %s AND c.contact_key = v.k",
                ([key for key, _ in tiers], [tier for _, tier in tiers], shop_id))
        elif tiers:  # plain tuples to the driver, as for the ledger
            conn.exec_driver_sql("UPDATE contacts SET loyalty_tier = ? WHERE shop_id = ? AND contact_key = ?",
                                 [(tier, shop_id, key) for key, tier in tiers])
        session.execute(sa.update(Contact).where(col(Contact.shop_id) == shop_id,
                                                 col(Contact.merged_into).is_(None))
                        .values(loyalty_rules_at=context.rules_at, dirty=True))
    return Recomputed(buyers=buyers, entries=written, tiers_changed=len(tiers),
                      seconds=time.perf_counter() - started)


@dataclass
class _Shared:
    """A recompute's inputs, set before the worker processes are forked so that they inherit them."""

    groups: list[tuple[str, list[Any]]]
    customers: dict[str, Any]
    refunds: dict[int, list[tuple[int, Decimal, datetime | None]]]
    ledgers: dict[str, list[lp.Entry]]
    contacts: dict[str, str | None]
    context: LoyaltyContext
    now: datetime


_SHARED: _Shared | None = None
_Slice = tuple[int, list[tuple[str, lp.Entry]], list[tuple[str, str]]]  # buyers, new entries, changed tiers
PARALLEL_FROM = 20_000  # buyers; below this, starting processes costs more than it saves


def _compute_slice(part: int, parts: int) -> _Slice:
    shared = _SHARED
    assert shared is not None
    new: list[tuple[str, lp.Entry]] = []
    changed: list[tuple[str, str]] = []
    groups = shared.groups[part::parts]
    for key, mine in groups:
        stored = shared.ledgers.get(key, [])
        view = evaluate(_facts(shared.customers.get(key), mine, shared.refunds, stored), stored, shared.context,
                        now=shared.now)
        new.extend((key, e) for e in view.new)
        if shared.contacts[key] != view.state.tier.name:
            changed.append((key, view.state.tier.name))
    return len(groups), new, changed


def _forget_connections(engine: Engine) -> None:
    engine.dispose(close=False)  # a forked process must never use (or close) its parent's connections


def _compute_all(engine: Engine, buyers: int) -> list[_Slice]:
    """The program is pure and buyers are independent: on a big shop, every core computes its share."""
    cores = min(os.cpu_count() or 1, 8)
    if buyers < PARALLEL_FROM or cores < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [_compute_slice(0, 1)]
    with multiprocessing.get_context("fork").Pool(cores, initializer=_forget_connections,
                                                  initargs=(engine,)) as pool:
        return pool.starmap(_compute_slice, [(part, cores) for part in range(cores)])


_FACT_KINDS = frozenset({lp.ADJUSTMENT, lp.REDEMPTION})  # the kinds whose first entry is a fact of its own
_UNUSED = datetime(1970, 1, 1, tzinfo=UTC)


def _ledgers(conn: sa.Connection, shop_id: int) -> dict[str, list[lp.Entry]]:
    """Every ledger of the shop. Corrections compare keys and amounts only, so times and reasons are read for
    the entries that are facts themselves (adjustments, redemptions) and left out of the others."""
    found: dict[str, list[lp.Entry]] = defaultdict(list)
    for key, entry_key, kind, points, occurred, recorded, reason in conn.execute(sa.select(
            col(LoyaltyEntry.contact_key), col(LoyaltyEntry.entry_key), col(LoyaltyEntry.kind),
            col(LoyaltyEntry.points), col(LoyaltyEntry.occurred_at), col(LoyaltyEntry.recorded_at),
            col(LoyaltyEntry.reason)).where(col(LoyaltyEntry.shop_id) == shop_id)
            .order_by(col(LoyaltyEntry.id))).tuples():
        if kind in _FACT_KINDS:
            at = occurred or recorded
            assert at is not None
            found[key].append(lp.Entry(entry_key, points, kind, _utc(at), reason or ""))
        else:
            found[key].append(lp.Entry(entry_key, points, kind, _UNUSED))
    return found


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _facts(customer: Any, orders: Sequence[Any], refunds: dict[int, list[tuple[int, Decimal, datetime | None]]],
           stored: Sequence[lp.Entry]) -> lp.BuyerFacts:
    """`sync.loyalty.program_facts` over plain rows (contact, id, created, basis or else subtotal, total, status,
    cancelled, test): the same facts, without an object per row."""
    facts = tuple(order_fact(order_id, _utc(created), basis, total, status, _utc(cancelled) if cancelled else None,
                             test, ((rid, amount, _utc(when) if when else None)
                                    for rid, amount, when in refunds.get(order_id, ())))
                  for _, order_id, created, basis, total, status, cancelled, test in orders if created is not None)
    return program_facts_from(customer, facts, stored)


def _grouped(orders: Iterable[Any], contacts: dict[str, str | None]) -> Iterator[tuple[str, list[Any]]]:
    """(contact key, its orders) for every buyer: those with orders (rows sorted by contact), then the rest."""
    seen: set[str] = set()
    group: list[Any] = []
    current: str | None = None
    for row in orders:
        if row[0] != current:
            if current is not None and current in contacts:
                yield current, group
                seen.add(current)
            current, group = row[0], []
        group.append(row)
    if current is not None and current in contacts:
        yield current, group
        seen.add(current)
    for key in contacts:
        if key not in seen:
            yield key, []
