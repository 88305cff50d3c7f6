"""The loyalty program in the pipeline: a buyer's mirror rows become the program's facts; the profile builder
settles their ledger from them and carries balance, tier and reward code to Brevo as attributes and events.

The program itself is pure (`loyalty.program`); this module only translates rows into facts and decides which
of the ledger's new entries are news (a live event) and which are history (attributes only).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.database import chunked, insert_new, one_of
from connector.models import Contact, Customer, LoyaltyReward, Order, Refund, Shop
from loyalty import program as lp
from loyalty.rules import LoyaltyRules
from loyalty.store import append_many
from mappings import events as ev
from mappings.shop_config import ShopConfig
from sync.apply import insert_events

# Event names: a product contract, like the other events (merchants build Brevo automations on them).
POINTS_EARNED = "loyalty_points_earned"
POINTS_REVERSED = "loyalty_points_reversed"
TIER_CHANGED = "loyalty_tier_changed"
REWARD_ISSUED = "loyalty_reward_issued"
POINTS_EXPIRING = "loyalty_points_expiring"
POINTS_EXPIRED = "loyalty_points_expired"

# Shopify's financial states in which the buyer has paid (a refund later takes its share back).
PAID_STATES = frozenset({"paid", "partially_refunded", "refunded"})
_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are typed by people


@dataclass(frozen=True, kw_only=True)
class LoyaltyContext:
    rules: LoyaltyRules
    started_at: datetime  # birthdays before this earn nothing
    rules_at: datetime  # the current rules took effect: entries before are history, not news

    @classmethod
    def of(cls, shop: Shop, now: datetime) -> LoyaltyContext:
        started = as_utc(shop.loyalty_started_at) or as_utc(shop.created_at) or now
        return cls(rules=LoyaltyRules.from_dict(shop.loyalty_rules), started_at=started,
                   rules_at=as_utc(shop.loyalty_rules_at) or started)


@dataclass(frozen=True, kw_only=True)
class LoyaltyView:
    owed: tuple[lp.Entry, ...]  # the ledger the buyer is owed, in the order things happened
    new: tuple[lp.Entry, ...]  # what the stored ledger lacks: appended by the builder
    state: lp.LoyaltyState
    reward_code: str | None
    next_at: datetime | None  # when the program changes for this buyer with nothing new arriving
    observed: Mapping[str, datetime]  # new entry key -> when what caused it was seen in Shopify


def parse_birthday(value: str | None) -> date | None:
    """`YYYY-MM-DD` or `--MM-DD` (year unknown); only month and day matter."""
    if not value:
        return None
    try:
        month, day = int(value[-5:-3]), int(value[-2:])
        return date(2000, month, day)  # a leap year, so 29 February is a birthday too
    except ValueError:
        return None


def program_facts(customer: Customer | None, orders: Sequence[Order], refunds: Mapping[int, Sequence[Refund]],
                  stored: Sequence[lp.Entry]) -> lp.BuyerFacts:
    """What the program needs of one buyer. Amounts are the shop-currency ones the mirror keeps (DESIGN 5),
    so an order paid in another currency earns from what the shop received, never from a mixed sum."""
    facts = []
    for order in orders:
        created = as_utc(order.created_at_src)
        if created is None:
            continue
        facts.append(order_fact(
            order.order_id, created, order.points_basis if order.points_basis is not None else order.subtotal,
            order.total, order.financial_status, as_utc(order.cancelled_at), order.test,
            ((r.refund_id, r.amount, as_utc(r.created_at_src))
             for r in sorted(refunds.get(order.order_id, ()), key=lambda r: r.refund_id))))
    return program_facts_from(customer, tuple(sorted(facts, key=lambda o: o.order_id)), stored)


def order_fact(order_id: int, created_at: datetime, basis: Decimal, total: Decimal, financial_status: str | None,
               cancelled_at: datetime | None, test: bool,
               refunds: Iterable[tuple[int, Decimal, datetime | None]]) -> lp.OrderFacts:
    """One order as the program sees it; a refund without a time of its own counts from the order's."""
    return lp.OrderFacts(order_id, created_at, basis, total, (financial_status or "") in PAID_STATES, cancelled_at,
                         test, tuple(lp.RefundFacts(rid, amount, when or created_at) for rid, amount, when in refunds))


def program_facts_from(customer: Any, orders: tuple[lp.OrderFacts, ...], stored: Sequence[lp.Entry]
                       ) -> lp.BuyerFacts:
    """The buyer's facts from their orders' facts, their customer record (or None: a guest) and the ledger.
    Adjustments and redemptions exist only in the ledger: their first entry is the fact."""
    adjustments = tuple(lp.Adjustment(key=e.key, points=e.points, reason=e.reason, at=e.at)
                        for e in stored if e.kind == lp.ADJUSTMENT and "#" not in e.key)
    redemptions = tuple(lp.Redemption(key=e.key, points=-e.points, at=e.at)
                        for e in stored if e.kind == lp.REDEMPTION and "#" not in e.key)
    real = customer is not None and not customer.deleted
    return lp.BuyerFacts(
        account_created_at=as_utc(customer.created_at_src) if real else None,
        birthday=parse_birthday(customer.birthday) if real else None,
        orders=orders, adjustments=adjustments, redemptions=redemptions)


def evaluate(facts: lp.BuyerFacts, stored: Sequence[lp.Entry], context: LoyaltyContext, *, now: datetime,
             orders: Sequence[Order] = (), refunds: Mapping[int, Sequence[Refund]] | None = None) -> LoyaltyView:
    rules = context.rules
    owed = lp.owed(facts, rules, now=now, program_start=context.started_at)
    new = lp.corrections(owed, stored, now=now)
    current = lp.state(owed, facts, rules, now=now)
    code = next((e.key.removeprefix("reward:") for e in reversed(owed)
                 if e.kind == lp.REDEMPTION and e.key.startswith("reward:")), None)
    return LoyaltyView(owed=tuple(owed), new=tuple(new), state=current, reward_code=code,
                       next_at=lp.next_moment(owed, facts, rules, now=now, current=current),
                       observed=_observed(new, orders, refunds or {}))


def _observed(new: Sequence[lp.Entry], orders: Sequence[Order], refunds: Mapping[int, Sequence[Refund]]
              ) -> dict[str, datetime]:
    """When the cause of each new entry reached us: an order's points are news when the order changed
    recently (paid today for an order placed last week), not only when it was placed."""
    if not new:
        return {}
    updated = {o.order_id: as_utc(o.updated_at_src) for o in orders}
    refunded = {r.refund_id: as_utc(r.created_at_src) for o in orders for r in refunds.get(o.order_id, ())}
    seen: dict[str, datetime] = {}
    for entry in new:
        base = entry.key.partition("#")[0]
        kind, _, rest = base.partition(":")
        ident = rest.split(":")[0]
        cause = None
        if kind == "order" and ident.isdigit():
            cause = updated.get(int(ident))
        elif kind == "refund" and ident.isdigit():
            cause = refunded.get(int(ident))
        seen[entry.key] = max(entry.at, cause) if cause else entry.at
    for entry in new:  # the first-order bonus is news exactly when that order's points are
        if entry.key == "first_order":
            seen[entry.key] = max((seen[e.key] for e in new if e.at == entry.at), default=entry.at)
    return seen


def loyalty_attributes(view: LoyaltyView) -> dict[str, Any]:
    state = view.state
    return {
        "LOYALTY_POINTS": state.balance,
        "LOYALTY_TIER": state.tier.name,
        "LOYALTY_NEXT_TIER": state.next_tier.name if state.next_tier else "",
        "LOYALTY_POINTS_TO_NEXT_TIER": state.points_to_next_tier if state.points_to_next_tier is not None else "",
        "LOYALTY_POINTS_EXPIRE_AT": state.expires_at.date().isoformat() if state.expires_at else "",
        "LOYALTY_REWARD_CODE": view.reward_code or "",
    }


def loyalty_events(view: LoyaltyView, *, shop_domain: str, buyer: ev.Buyer, previous_tier: str | None,
                   recomputing: bool, since: datetime, now: datetime, rules: LoyaltyRules,
                   currency: str | None) -> list[ev.EventFact]:
    """The events this build produces: one per new ledger entry that is news, a tier change, an expiry warning.

    `since`: entries whose cause is older are history (attributes only). `recomputing`: the rules changed or
    the program just started, so corrections and the tier reached are not news either.
    """
    state = view.state
    key_base = f"{shop_domain}:loyalty:{buyer.contact_key}"
    common = {"balance": state.balance, "tier": state.tier.name}
    facts = [entry_event(entry, shop_domain=shop_domain, buyer=buyer, balance=state.balance, tier=state.tier.name,
                         rules=rules, currency=currency)
             for entry in view.new
             if view.observed.get(entry.key, entry.at) >= since and not (recomputing and "#" in entry.key)]
    if previous_tier and previous_tier != state.tier.name and not recomputing:
        ranks = {t.name: i for i, t in enumerate(rules.tiers)}
        direction = "up" if ranks.get(state.tier.name, 0) > ranks.get(previous_tier, 0) else "down"
        facts.append(ev.lifecycle_event(
            TIER_CHANGED, f"{key_base}:tier:{previous_tier}>{state.tier.name}:{now.date().isoformat()}", buyer, now,
            {**common, "from": previous_tier, "to": state.tier.name, "direction": direction}))
    warn_at = lp.expiry_warning_at(state.expires_at, rules)
    if state.expires_at and warn_at and state.balance > 0 and warn_at <= now < state.expires_at:
        expiry = state.expires_at.date().isoformat()
        facts.append(ev.lifecycle_event(POINTS_EXPIRING, f"{key_base}:expiring:{expiry}", buyer, max(warn_at, since),
                                        {**common, "points": state.balance, "expires_at": expiry}))
    return facts


def entry_event(entry: lp.Entry, *, shop_domain: str, buyer: ev.Buyer, balance: int, tier: str,
                rules: LoyaltyRules, currency: str | None) -> ev.EventFact:
    """The event of one ledger entry; its idempotency key is the entry's, so it is sent once."""
    props: dict[str, Any] = {"balance": balance, "tier": tier, "points": abs(entry.points), "reason": entry.reason,
                             "kind": entry.kind}
    if entry.kind == lp.EXPIRY:
        name = POINTS_EXPIRED
    elif entry.kind == lp.REDEMPTION and "#" not in entry.key:  # a correction of it is no second reward
        name = REWARD_ISSUED
        props.update(code=entry.key.removeprefix("reward:"),
                     value=ev.money_text(rules.reward_value), currency=currency or "")
    elif entry.points > 0:
        name = POINTS_EARNED
    else:
        name = POINTS_REVERSED
    return ev.lifecycle_event(name, f"{shop_domain}:loyalty:{buyer.contact_key}:{entry.key}", buyer, entry.at, props)


def record_entry(session: Session, shop: Shop, contact: Contact, view: LoyaltyView, entry: lp.Entry, *,
                 now: datetime) -> int:
    """An entry the mirror does not derive (an adjustment, a confirmed reward): the ledger first catches up
    with what is owed, then the entry is appended and announced in the same unit of work, and the contact is
    rebuilt so Brevo gets the new balance. Returns the balance after it."""
    shop_id = shop.id or 0
    append_many(session, shop_id, [(contact.contact_key, e) for e in (*view.new, entry)], now=now)
    balance = view.state.balance + entry.points
    if contact.email or contact.phone or contact.customer_id:
        buyer = ev.Buyer(contact_key=contact.contact_key, customer_id=contact.customer_id, email=contact.email,
                         phone=contact.phone)
        fact = entry_event(entry, shop_domain=shop.domain, buyer=buyer, balance=balance, tier=view.state.tier.name,
                           rules=LoyaltyRules.from_dict(shop.loyalty_rules), currency=shop.currency)
        insert_events(session, shop_id, [fact], now=now, enabled=ShopConfig.from_dict(shop.config).event_enabled)
    contact.dirty = True
    return balance


def new_code() -> str:
    return "REWARD-" + "".join(secrets.choice(_CODE_ALPHABET) for _ in range(10))


def request_reward(session: Session, shop_id: int, contact_key: str, rules: LoyaltyRules, *, source: str,
                   now: datetime) -> LoyaltyReward | None:
    """Ask for one reward code for this buyer (issued by the worker through Shopify). At most one request
    per buyer is open at a time; returns it (the new one, or the one already waiting)."""
    waiting = session.execute(sa.select(LoyaltyReward).where(
        col(LoyaltyReward.shop_id) == shop_id, col(LoyaltyReward.contact_key) == contact_key,
        col(LoyaltyReward.status) == "requested")).scalars().first()
    if waiting is not None:
        return waiting
    count = session.execute(sa.select(sa.func.count()).select_from(LoyaltyReward).where(
        col(LoyaltyReward.shop_id) == shop_id, col(LoyaltyReward.contact_key) == contact_key)).scalar_one()
    request_key = f"{contact_key}:{count + 1}"
    insert_new(session, LoyaltyReward, [{
        "shop_id": shop_id, "contact_key": contact_key, "request_key": request_key,
        "source": source, "points": rules.reward_every_points, "value": rules.reward_value, "code": new_code(),
        "status": "requested", "attempts": 0, "next_attempt_at": None, "requested_at": now}],
        ["shop_id", "request_key"])
    return session.execute(sa.select(LoyaltyReward).where(
        col(LoyaltyReward.shop_id) == shop_id, col(LoyaltyReward.request_key) == request_key)
    ).scalars().first()


def open_requests(session: Session, shop_id: int, contact_keys: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for chunk in chunked(set(contact_keys)):
        found.update(session.execute(sa.select(col(LoyaltyReward.contact_key)).where(
            col(LoyaltyReward.shop_id) == shop_id, col(LoyaltyReward.status) == "requested",
            one_of(col(LoyaltyReward.contact_key), chunk, session))).scalars())
    return found

