"""What a merchant or operator does to a shop's loyalty program: set its rules, adjust a buyer's points, ask for
a reward code, recompute every ledger from the mirrored history, and look at one buyer's ledger."""

from __future__ import annotations

import queue
import threading
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
        groups = list(_grouped(orders, contacts))
        del orders
        inputs = _Inputs(customers=customers, refunds=refunds, ledgers=ledgers, contacts=contacts,
                         context=context, now=now)
        tiers: list[tuple[str, str]] = []
        with _LedgerWriter(session, shop_id, now=now) as writer:
            for start in range(0, len(groups), BUYERS_PER_BATCH):
                new, changed = _compute(groups[start:start + BUYERS_PER_BATCH], inputs)
                writer.put(new)
                tiers.extend(changed)
        buyers, written = len(groups), writer.written
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


@dataclass(frozen=True)
class _Inputs:
    """What a recompute reads once for the whole shop (orders come grouped per buyer, batch by batch)."""

    customers: dict[str, Any]
    refunds: dict[int, list[tuple[int, Decimal, datetime | None]]]
    ledgers: dict[str, list[lp.Entry]]
    contacts: dict[str, str | None]
    context: LoyaltyContext
    now: datetime


BUYERS_PER_BATCH = 2500  # about 20,000 ledger entries on a first run: one COPY each on PostgreSQL


def _compute(groups: Sequence[tuple[str, list[Any]]], inputs: _Inputs
             ) -> tuple[list[tuple[str, lp.Entry]], list[tuple[str, str]]]:
    """The corrections and changed tiers of a batch of buyers (pure: no database)."""
    new: list[tuple[str, lp.Entry]] = []
    changed: list[tuple[str, str]] = []
    for key, mine in groups:
        stored = inputs.ledgers.get(key, [])
        view = evaluate(_facts(inputs.customers.get(key), mine, inputs.refunds, stored), stored, inputs.context,
                        now=inputs.now)
        new.extend((key, e) for e in view.new)
        if inputs.contacts[key] != view.state.tier.name:
            changed.append((key, view.state.tier.name))
    return new, changed


class _LedgerWriter:
    """Writes batches of ledger entries on the session's connection from a second thread while the caller
    computes the next batch: the database's share of the work overlaps the program's (measured on a 2-core
    machine, the whole recompute takes about the compute time alone). The caller must not use the session until
    the `with` block ends; a failed write is raised there, and the unit of work rolls everything back."""

    def __init__(self, session: Session, shop_id: int, *, now: datetime) -> None:
        self.session, self.shop_id, self.now = session, shop_id, now
        self.written = 0
        self._queue: queue.Queue[list[tuple[str, lp.Entry]] | None] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="loyalty-ledger-writer", daemon=True)

    def __enter__(self) -> _LedgerWriter:
        self._thread.start()
        return self

    def put(self, entries: list[tuple[str, lp.Entry]]) -> None:
        if self._failure is not None:
            raise self._failure
        if entries:
            self._queue.put(entries)

    def _run(self) -> None:
        while (entries := self._queue.get()) is not None:
            if self._failure is None:  # after a failure, drain without writing so the caller never blocks
                try:
                    self.written += append_many(self.session, self.shop_id, entries, now=self.now)
                except BaseException as exc:  # re-raised in the caller's thread
                    self._failure = exc

    def __exit__(self, *exc_info: object) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._failure is not None and exc_info[0] is None:
            raise self._failure


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
