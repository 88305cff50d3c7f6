"""The loyalty program as pure functions: a buyer's facts and the shop's rules give the ledger they are owed.

The ledger is append-only and keyed by source (`order:ID:earn`, `refund:ID`, `signup`, ...). What a buyer is
owed is recomputed from the mirrored history, in the order things happened, whatever order Shopify delivered
them in; `corrections` turns the difference between that and what is stored into new entries. So a replayed
webhook, a poll and a backfill of the same order add points once, and a late delivery changes what it must
and nothing else. Balances, lifetime figures and tiers are always derived from the entries.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import NamedTuple, cast

from loyalty.rules import LoyaltyRules, Tier

# Entry kinds. Earning kinds count towards tiers; the others do not (spending never demotes).
EARN, BONUS, ADJUSTMENT = "earn", "bonus", "adjustment"
REVERSAL, EXPIRY, REDEMPTION = "reversal", "expiry", "redemption"
EARNING_KINDS = frozenset({EARN, BONUS, REVERSAL})  # reversals take back what an order earned


class RefundFacts(NamedTuple):
    refund_id: int
    amount: Decimal  # shop currency, what the buyer got back
    created_at: datetime


class OrderFacts(NamedTuple):
    order_id: int
    created_at: datetime
    basis: Decimal  # subtotal after discounts, without tax and shipping, in shop currency
    total: Decimal  # what the buyer paid, in shop currency (refunds are a share of it)
    paid: bool
    cancelled_at: datetime | None = None
    test: bool = False
    refunds: tuple[RefundFacts, ...] = ()


@dataclass(frozen=True)
class Adjustment:
    key: str  # unique per adjustment, e.g. "adjust:<uuid>"
    points: int
    reason: str
    at: datetime


@dataclass(frozen=True)
class Redemption:
    key: str  # "reward:<code>": deducted only once Shopify confirmed the code
    points: int
    at: datetime


@dataclass(frozen=True)
class BuyerFacts:
    account_created_at: datetime | None = None  # None for guests: no signup bonus
    birthday: date | None = None  # month and day matter
    orders: tuple[OrderFacts, ...] = ()
    adjustments: tuple[Adjustment, ...] = ()
    redemptions: tuple[Redemption, ...] = ()


class Entry(NamedTuple):
    key: str
    points: int  # positive earns, negative takes back
    kind: str
    at: datetime
    reason: str = ""


@dataclass(frozen=True)
class LoyaltyState:
    balance: int
    lifetime_earned: int
    tier: Tier
    next_tier: Tier | None
    points_to_next_tier: int | None
    expires_at: datetime | None  # when the balance expires if nothing happens before
    measure: Decimal


class _Timeline:
    """The earning entries in time order with running sums, so a window's measure is two binary searches."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.ats: list[datetime] = []
        self.sums: list[int] = [0]
        for entry in sorted(entries, key=lambda e: e.at):
            self.add(entry)

    def add(self, entry: Entry) -> None:
        if entry.kind not in EARNING_KINDS:
            return
        if self.ats and entry.at < self.ats[-1]:  # out of order (rare): rebuild the sums
            at = bisect_right(self.ats, entry.at)
            points = [b - a for a, b in itertools.pairwise(self.sums)]
            self.ats.insert(at, entry.at)
            points.insert(at, entry.points)
            self.sums = list(itertools.accumulate(points, initial=0))
            return
        self.ats.append(entry.at)
        self.sums.append(self.sums[-1] + entry.points)

    def upto(self, moment: datetime) -> int:
        """Points of the entries at or before `moment`."""
        return self.sums[bisect_right(self.ats, moment)]

    def before(self, moment: datetime) -> int:
        return self.sums[bisect_left(self.ats, moment)]

    def moments(self, since: datetime, until: datetime) -> list[datetime]:
        return self.ats[bisect_left(self.ats, since):bisect_right(self.ats, until)]


@dataclass
class _Running:
    entries: list[Entry] = field(default_factory=list)
    balance: int = 0
    timeline: _Timeline = field(default_factory=_Timeline)
    expiry_for: datetime | None = None  # the last order the cached expiry moment belongs to
    expiry_at: datetime | None = None

    def add(self, entry: Entry) -> None:
        if entry.points:
            self.entries.append(entry)
            self.balance += entry.points
            self.timeline.add(entry)


def owed(facts: BuyerFacts, rules: LoyaltyRules, *, now: datetime, program_start: datetime) -> list[Entry]:
    """Every entry this buyer is owed at `now`, in the order it happened. Never leaves the balance below 0."""
    if not rules.enabled:
        return []
    happenings: list[tuple[datetime, int, str, object]] = []  # (when, tie-break, what, fact)
    if facts.account_created_at is not None and rules.signup_bonus:
        happenings.append((facts.account_created_at, 0, "signup", None))
    counted = [o for o in facts.orders if o.paid and (rules.count_test_orders or not o.test)]
    for order in counted:
        happenings.append((order.created_at, 1, "order", order))
        for refund in order.refunds:
            happenings.append((max(refund.created_at, order.created_at), 2, "refund", (order, refund)))
        if order.cancelled_at is not None:
            happenings.append((max(order.cancelled_at, order.created_at), 3, "cancel", order))
    for adjustment in facts.adjustments:
        happenings.append((adjustment.at, 4, "adjust", adjustment))
    for redemption in facts.redemptions:
        happenings.append((redemption.at, 5, "redeem", redemption))
    if facts.birthday is not None and rules.birthday_bonus:
        for year in range(program_start.year, now.year + 1):
            day = _birthday_in(facts.birthday, year, now)
            if program_start <= day <= now:
                happenings.append((day, 6, "birthday", year))
    happenings.sort(key=lambda h: (h[0], h[1], _order_key(h[3])))
    # A confirmed reward code cost its points: if a refund or cancellation dated before it (but learnt of after
    # it) would leave too little for it, the reversals before it take less ("never below what is left"), most
    # recent first. Only late news does this, so it is nearly always one pass; the redemption itself is capped
    # only when no reversal can make room (rules changed so that the history no longer earned it).
    relief: dict[str, int] = {}
    for _ in range(_RELIEF_PASSES):
        entries, more = _replay(happenings, counted, rules, now, relief)
        if not more:
            break
        for key, points in more.items():
            relief[key] = relief.get(key, 0) + points
    else:
        entries, _ = _replay(happenings, counted, rules, now, relief)
    return entries


_RELIEF_PASSES = 8


def _replay(happenings: Sequence[tuple[datetime, int, str, object]], counted: Sequence[OrderFacts],
            rules: LoyaltyRules, now: datetime, relief: dict[str, int]) -> tuple[list[Entry], dict[str, int]]:
    """One pass over the buyer's history; returns the entries and any further relief a redemption needs."""
    run = _Running()
    uniform = rules.uniform_multiplier
    earned_by_order: dict[int, int] = {}
    reversed_by_order: dict[int, int] = defaultdict(int)
    refunded_by_order: dict[int, Decimal] = defaultdict(Decimal)
    first_order_done = False
    last_order_at: datetime | None = None
    more: dict[str, int] = {}
    for when, _, what, fact in happenings:
        _expire_until(run, rules, last_order_at, when)
        if what == "signup":
            run.add(Entry("signup", rules.signup_bonus, BONUS, when, "account created"))
        elif what == "order":
            assert isinstance(fact, OrderFacts)
            multiplier = (rules.tiers[0].multiplier if uniform
                          else _tier_at(run.timeline, rules, when, counted).multiplier)
            points = int((fact.basis * rules.points_per_unit * multiplier).to_integral_value(ROUND_DOWN))
            earned_by_order[fact.order_id] = max(points, 0)
            run.add(Entry(f"order:{fact.order_id}:earn", max(points, 0), EARN, when, f"order {fact.order_id}"))
            last_order_at = when
            if not first_order_done and rules.first_order_bonus and fact.cancelled_at is None:
                first_order_done = True
                run.add(Entry("first_order", rules.first_order_bonus, BONUS, when, f"first order {fact.order_id}"))
        elif what == "refund":
            order, refund = cast(tuple[OrderFacts, RefundFacts], fact)
            refunded_by_order[order.order_id] += refund.amount
            earned = earned_by_order.get(order.order_id, 0)
            share = min(refunded_by_order[order.order_id] / order.total, Decimal(1)) if order.total > 0 else Decimal(1)
            due = min(int((earned * share).to_integral_value(ROUND_HALF_UP)), earned)
            key = f"refund:{refund.refund_id}"
            take = min(due - reversed_by_order[order.order_id], run.balance) - relief.get(key, 0)
            if take > 0:  # never below what is left
                reversed_by_order[order.order_id] += take
                run.add(Entry(key, -take, REVERSAL, when, f"refund of order {order.order_id}"))
        elif what == "cancel":
            assert isinstance(fact, OrderFacts)
            earned = earned_by_order.get(fact.order_id, 0)
            key = f"order:{fact.order_id}:cancel"
            take = min(earned - reversed_by_order[fact.order_id], run.balance) - relief.get(key, 0)
            if take > 0:
                reversed_by_order[fact.order_id] += take
                run.add(Entry(key, -take, REVERSAL, when, f"order {fact.order_id} cancelled"))
        elif what == "adjust":
            assert isinstance(fact, Adjustment)
            run.add(Entry(fact.key, max(fact.points, -run.balance), ADJUSTMENT, when, fact.reason))
        elif what == "redeem":
            assert isinstance(fact, Redemption)
            if fact.points > run.balance and not more:
                more = _room(run.entries, fact.points - run.balance)
            run.add(Entry(fact.key, -min(fact.points, run.balance), REDEMPTION, when, "reward code"))
        elif what == "birthday":
            run.add(Entry(f"birthday:{fact}", rules.birthday_bonus, BONUS, when, "birthday"))
    _expire_until(run, rules, last_order_at, now)
    return run.entries, more


def _room(earlier: Sequence[Entry], needed: int) -> dict[str, int]:
    """How much each reversal before a redemption gives back (most recent first) to make `needed` points room."""
    room: dict[str, int] = {}
    for entry in reversed(earlier):
        if needed <= 0:
            break
        if entry.kind == REVERSAL and entry.points < 0:
            give = min(-entry.points, needed)
            room[entry.key] = give
            needed -= give
    return room


def _order_key(fact: object) -> int:
    if isinstance(fact, OrderFacts):
        return fact.order_id
    if isinstance(fact, tuple):
        return int(fact[1].refund_id)
    return 0


def _birthday_in(birthday: date, year: int, now: datetime) -> datetime:
    day = birthday.day if not (birthday.month == 2 and birthday.day == 29) or _leap(year) else 28
    return datetime(year, birthday.month, day, tzinfo=now.tzinfo)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def expiry_moment(last_order_at: datetime | None, rules: LoyaltyRules) -> datetime | None:
    if last_order_at is None or rules.expiry_months <= 0:
        return None
    return add_months(last_order_at, rules.expiry_months)


def add_months(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    days_in = [31, 29 if _leap(year) else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    return moment.replace(year=year, month=month, day=min(moment.day, days_in))


def _expire_until(run: _Running, rules: LoyaltyRules, last_order_at: datetime | None, until: datetime) -> None:
    """Points expire N months after the buyer's last order: the whole balance at that moment."""
    if last_order_at is None or run.balance <= 0:
        return
    if run.expiry_for != last_order_at:  # computed once per last order, not once per happening
        run.expiry_for, run.expiry_at = last_order_at, expiry_moment(last_order_at, rules)
    moment = run.expiry_at
    if moment is None or moment > until:
        return
    key = f"expiry:{moment.date().isoformat()}"
    if any(e.key == key for e in run.entries):
        return
    run.add(Entry(key, -run.balance, EXPIRY, moment, f"no order for {rules.expiry_months} months"))


_YEAR = timedelta(days=365)


def _measure(timeline: _Timeline, rules: LoyaltyRules, at: datetime, orders: Sequence[OrderFacts]) -> Decimal:
    if rules.tier_measure == "spend_12_months":
        since = at - _YEAR
        return sum((o.basis - sum((r.amount for r in o.refunds if r.created_at <= at), Decimal(0))
                    for o in orders if since < o.created_at <= at and o.cancelled_at is None), Decimal(0))
    if rules.tier_measure == "lifetime_points":
        points = timeline.upto(at)
    elif rules.tier_measure == "calendar_year":
        points = timeline.upto(at) - timeline.before(at.replace(month=1, day=1, hour=0, minute=0, second=0,
                                                                microsecond=0))
    else:  # rolling_12_months
        points = timeline.upto(at) - timeline.upto(at - _YEAR)
    return Decimal(max(points, 0))


def _tier_at(timeline: _Timeline, rules: LoyaltyRules, at: datetime, orders: Sequence[OrderFacts]) -> Tier:
    """The best tier the buyer held at any moment of the grace period up to `at`: a tier is kept that long
    after the measure drops below it. Between entries a measure only falls (entries leave its window), so the
    start of the period and the entries inside it are the moments to look at."""
    best = rules.tier_for(_measure(timeline, rules, at, orders))
    since = at - timedelta(days=rules.tier_grace_days)
    moments = {since, *timeline.moments(since, at)}
    if rules.tier_measure == "spend_12_months":
        moments |= {o.created_at for o in orders if since <= o.created_at <= at}
    for moment in moments:
        reached = rules.tier_for(_measure(timeline, rules, moment, orders))
        if reached.threshold > best.threshold:
            best = reached
    return best


def state(entries: Sequence[Entry], facts: BuyerFacts, rules: LoyaltyRules, *, now: datetime,
          timeline: _Timeline | None = None) -> LoyaltyState:
    """Balance, lifetime points and tier, derived from the entries (never stored as a running total)."""
    # Every entry counts, even one stamped a little after `now` (Shopify's clock ahead of ours): the balance
    # is always the ledger's sum.
    balance = sum(e.points for e in entries)
    lifetime = sum(e.points for e in entries if e.kind in (EARN, BONUS))
    counted = [o for o in facts.orders if o.paid and (rules.count_test_orders or not o.test)]
    latest = max([now, *(e.at for e in entries)])  # likewise for the tier window
    timeline = timeline or _Timeline(entries)
    tier = _tier_at(timeline, rules, latest, counted)
    measure = _measure(timeline, rules, latest, counted)
    following = rules.next_tier(tier)
    to_next = None if following is None else max(int((following.threshold - measure).to_integral_value()), 0)
    last_order = max((o.created_at for o in counted), default=None)
    expires = expiry_moment(last_order, rules) if balance > 0 else None
    return LoyaltyState(balance=balance, lifetime_earned=lifetime, tier=tier, next_tier=following,
                        points_to_next_tier=to_next, expires_at=expires, measure=measure)


def corrections(wanted: Iterable[Entry], stored: Iterable[Entry], *, now: datetime) -> list[Entry]:
    """New entries that bring the stored ledger to what is owed, per source key.

    A key owed for the first time is written as it is; a key whose amount changed (a late delivery moved a
    multiplier, a refund arrived) gets a delta entry `KEY#N`; a key stored but no longer owed is taken back.
    Applying the result and asking again gives nothing: replays and re-runs change nothing.
    """
    have: dict[str, int] = defaultdict(int)
    kinds: dict[str, str] = {}
    revisions: dict[str, int] = defaultdict(int)
    for entry in stored:
        base, _, revision = entry.key.partition("#")
        have[base] += entry.points
        kinds.setdefault(base, entry.kind)
        if revision:
            revisions[base] += 1
    owed_by_key = {e.key: e for e in wanted}
    out: list[Entry] = []
    for key, entry in owed_by_key.items():
        if key not in have:
            out.append(entry)
        elif have[key] != entry.points:
            out.append(Entry(f"{key}#{revisions[key] + 1}", entry.points - have[key], entry.kind, now,
                             f"correction: {entry.reason}"))
    for key, points in have.items():
        if key not in owed_by_key and points:
            out.append(Entry(f"{key}#{revisions[key] + 1}", -points, kinds[key], now, "no longer owed"))
    return out


def expiry_warning_at(expires_at: datetime | None, rules: LoyaltyRules) -> datetime | None:
    if expires_at is None or rules.expiry_warning_days <= 0:
        return None
    return expires_at - timedelta(days=rules.expiry_warning_days)


def next_moment(entries: Sequence[Entry], facts: BuyerFacts, rules: LoyaltyRules, *, now: datetime,
                current: LoyaltyState | None = None) -> datetime | None:
    """The next moment after `now` at which this buyer's program changes with nothing new arriving: an expiry
    warning or an expiry, a birthday bonus, an entry leaving the tier window or a tier's grace period ending."""
    if not rules.enabled:
        return None
    current = current or state(entries, facts, rules, now=now)
    candidates = [current.expires_at, expiry_warning_at(current.expires_at, rules)]
    if facts.birthday is not None and rules.birthday_bonus:
        for year in (now.year, now.year + 1):
            candidates.append(_birthday_in(facts.birthday, year, now))
    grace = timedelta(days=rules.tier_grace_days)
    if rules.tier_measure == "calendar_year":
        new_year = datetime(now.year + 1, 1, 1, tzinfo=now.tzinfo)
        candidates += [new_year, new_year + grace]
    elif rules.tier_measure in ("rolling_12_months", "spend_12_months"):
        window = timedelta(days=365)
        for entry in entries:
            if entry.kind in EARNING_KINDS and entry.at + window + grace > now:
                candidates += [entry.at + window, entry.at + window + grace]
    later = [c for c in candidates if c is not None and c > now]
    return min(later, default=None)
