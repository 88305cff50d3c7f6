"""The loyalty program's pure core: hand-computed ledgers, rules validation, and properties over random histories."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loyalty.program import (
    Adjustment,
    BuyerFacts,
    Entry,
    OrderFacts,
    Redemption,
    RefundFacts,
    corrections,
    owed,
    state,
)
from loyalty.rules import LoyaltyRules
from mappings.shop_config import ConfigError

T0 = datetime(2026, 1, 10, 12, tzinfo=UTC)
START = datetime(2025, 1, 1, tzinfo=UTC)


def _order(order_id: int, basis: str, *, day: int = 0, total: str | None = None, refunds: tuple[RefundFacts, ...] = (),
           cancelled_day: int | None = None, paid: bool = True, test: bool = False) -> OrderFacts:
    return OrderFacts(order_id=order_id, created_at=T0 + timedelta(days=day), basis=Decimal(basis),
                      total=Decimal(total or basis), paid=paid, test=test, refunds=refunds,
                      cancelled_at=T0 + timedelta(days=cancelled_day) if cancelled_day is not None else None)


def _points(entries: list[Entry]) -> dict[str, int]:
    return {e.key: e.points for e in entries}


def test_an_order_earns_a_point_per_unit_rounded_down_plus_the_signup_and_first_order_bonuses() -> None:
    facts = BuyerFacts(account_created_at=T0 - timedelta(days=3), orders=(_order(1, "123.99"),))
    entries = owed(facts, LoyaltyRules(), now=T0 + timedelta(days=1), program_start=START)
    assert _points(entries) == {"signup": 50, "order:1:earn": 123, "first_order": 50}
    assert state(entries, facts, LoyaltyRules(), now=T0 + timedelta(days=1)).balance == 223


def test_unpaid_test_and_guest_orders_earn_what_the_rules_say() -> None:
    facts = BuyerFacts(orders=(_order(1, "80", paid=False), _order(2, "40", day=1, test=True), _order(3, "10", day=2)))
    entries = owed(facts, LoyaltyRules(), now=T0 + timedelta(days=3), program_start=START)
    assert _points(entries) == {"order:3:earn": 10, "first_order": 50}  # a guest: no signup bonus


def test_a_refund_takes_back_its_share_and_a_cancellation_what_is_left() -> None:
    refund = RefundFacts(refund_id=9, amount=Decimal("55.00"), created_at=T0 + timedelta(days=2))
    facts = BuyerFacts(orders=(_order(1, "100", total="110", refunds=(refund,), cancelled_day=4),))
    rules = LoyaltyRules(first_order_bonus=0)
    entries = owed(facts, rules, now=T0 + timedelta(days=5), program_start=START)
    # 100 earned; 55 of 110 paid came back: half the points (50); the cancellation takes the other 50.
    assert _points(entries) == {"order:1:earn": 100, "refund:9": -50, "order:1:cancel": -50}


def test_a_reversal_never_takes_more_than_is_left() -> None:
    spent = Adjustment(key="adjust:1", points=-90, reason="gift", at=T0 + timedelta(days=1))
    refund = RefundFacts(refund_id=9, amount=Decimal("100"), created_at=T0 + timedelta(days=2))
    facts = BuyerFacts(orders=(_order(1, "100", refunds=(refund,)),), adjustments=(spent,))
    entries = owed(facts, LoyaltyRules(first_order_bonus=0), now=T0 + timedelta(days=3), program_start=START)
    assert _points(entries) == {"order:1:earn": 100, "adjust:1": -90, "refund:9": -10}


def test_a_refund_learnt_of_after_a_reward_takes_only_what_the_reward_left() -> None:
    """The code cost its points when Shopify confirmed it; a refund dated earlier but delivered later finds
    nothing left to take back, instead of making the code cheaper."""
    refund = RefundFacts(refund_id=9, amount=Decimal("250"), created_at=T0 + timedelta(days=2))
    reward = Redemption(key="reward:ABC", points=500, at=T0 + timedelta(days=3))
    facts = BuyerFacts(orders=(_order(1, "500", refunds=(refund,)),), redemptions=(reward,))
    entries = owed(facts, LoyaltyRules(first_order_bonus=0), now=T0 + timedelta(days=4), program_start=START)
    assert _points(entries) == {"order:1:earn": 500, "reward:ABC": -500}


def test_a_refund_known_before_a_reward_still_takes_its_share() -> None:
    refund = RefundFacts(refund_id=9, amount=Decimal("500"), created_at=T0 + timedelta(days=1))
    reward = Redemption(key="reward:ABC", points=500, at=T0 + timedelta(days=3))
    facts = BuyerFacts(orders=(_order(1, "1000", refunds=(refund,)),), redemptions=(reward,))
    entries = owed(facts, LoyaltyRules(first_order_bonus=0), now=T0 + timedelta(days=4), program_start=START)
    assert _points(entries) == {"order:1:earn": 1000, "refund:9": -500, "reward:ABC": -500}


def test_a_late_cancellation_leaves_a_reward_whole_and_takes_the_rest() -> None:
    reward = Redemption(key="reward:ABC", points=500, at=T0 + timedelta(days=3))
    facts = BuyerFacts(orders=(_order(1, "800", cancelled_day=2),), redemptions=(reward,))
    entries = owed(facts, LoyaltyRules(first_order_bonus=0), now=T0 + timedelta(days=4), program_start=START)
    assert _points(entries) == {"order:1:earn": 800, "order:1:cancel": -300, "reward:ABC": -500}
    assert sum(e.points for e in entries) == 0


def test_a_reward_the_new_rules_no_longer_cover_costs_what_is_left() -> None:
    reward = Redemption(key="reward:ABC", points=500, at=T0 + timedelta(days=3))
    facts = BuyerFacts(orders=(_order(1, "500"),), redemptions=(reward,))
    halved = LoyaltyRules.from_toml("[earn]\npoints_per_unit = 0.5\nfirst_order_bonus = 0\n")
    entries = owed(facts, halved, now=T0 + timedelta(days=4), program_start=START)
    assert _points(entries) == {"order:1:earn": 250, "reward:ABC": -250}  # never below zero


def test_a_tier_multiplier_applies_to_orders_placed_once_the_tier_is_reached() -> None:
    rules = LoyaltyRules.from_toml("""
        [earn]
        signup_bonus = 0
        first_order_bonus = 0
        [tiers]
        levels = [{name = "Member", threshold = 0}, {name = "Gold", threshold = 500, multiplier = 2}]
    """)
    facts = BuyerFacts(orders=(_order(1, "600"), _order(2, "10", day=1)))
    entries = owed(facts, rules, now=T0 + timedelta(days=2), program_start=START)
    assert _points(entries) == {"order:1:earn": 600, "order:2:earn": 20}
    now_state = state(entries, facts, rules, now=T0 + timedelta(days=2))
    assert now_state.tier.name == "Gold" and now_state.next_tier is None


def test_a_tier_reached_is_kept_for_the_grace_period_then_follows_the_rolling_year() -> None:
    rules = LoyaltyRules(signup_bonus=0, first_order_bonus=0, tier_grace_days=90, expiry_months=0)
    facts = BuyerFacts(orders=(_order(1, "600"),))
    entries = owed(facts, rules, now=T0 + timedelta(days=400), program_start=START)
    assert state(entries, facts, rules, now=T0 + timedelta(days=300)).tier.name == "Silver"
    assert state(entries, facts, rules, now=T0 + timedelta(days=400)).tier.name == "Silver"  # 366..456: grace
    assert state(entries, facts, rules, now=T0 + timedelta(days=460)).tier.name == "Bronze"


def test_points_expire_months_after_the_last_order_and_a_new_order_restarts_the_clock() -> None:
    rules = LoyaltyRules(signup_bonus=0, first_order_bonus=0, expiry_months=12)
    facts = BuyerFacts(orders=(_order(1, "40"),))
    later = datetime(2027, 2, 1, tzinfo=UTC)
    entries = owed(facts, rules, now=later, program_start=START)
    assert _points(entries) == {"order:1:earn": 40, "expiry:2027-01-10": -40}
    assert state(entries, facts, rules, now=later).balance == 0
    kept = BuyerFacts(orders=(_order(1, "40"), _order(2, "5", day=300)))
    entries = owed(kept, rules, now=later, program_start=START)
    assert _points(entries) == {"order:1:earn": 40, "order:2:earn": 5}
    assert state(entries, kept, rules, now=later).expires_at == datetime(2027, 11, 6, 12, tzinfo=UTC)


def test_the_birthday_bonus_comes_once_a_year_from_the_program_start() -> None:
    facts = BuyerFacts(birthday=date(1990, 3, 15))
    entries = owed(facts, LoyaltyRules(), now=datetime(2027, 3, 20, tzinfo=UTC),
                   program_start=datetime(2026, 6, 1, tzinfo=UTC))
    assert _points(entries) == {"birthday:2027": 100}


def test_corrections_write_what_is_new_change_what_moved_and_nothing_on_a_replay() -> None:
    rules = LoyaltyRules(first_order_bonus=0)
    now = T0 + timedelta(days=5)
    first = owed(BuyerFacts(orders=(_order(1, "100"),)), rules, now=now, program_start=START)
    stored = corrections(first, [], now=now)
    assert corrections(first, stored, now=now) == []
    refund = RefundFacts(refund_id=9, amount=Decimal("25"), created_at=T0 + timedelta(days=1))
    second = owed(BuyerFacts(orders=(_order(1, "100", refunds=(refund,)),)), rules, now=now, program_start=START)
    delta = corrections(second, stored, now=now)
    assert _points(delta) == {"refund:9": -25}
    shrunk = owed(BuyerFacts(orders=(_order(1, "80"),)), rules, now=now, program_start=START)
    assert _points(corrections(shrunk, stored, now=now)) == {"order:1:earn#1": -20}


@pytest.mark.parametrize(("toml", "key"), [
    ("[earn]\npoints_per_unit = -1", "earn.points_per_unit"),
    ("[earn]\nbonus = 5", "earn.bonus"),
    ("[tiers]\nmeasure = 'moon phase'", "tiers.measure"),
    ("[tiers]\nlevels = [{name = 'A', threshold = 10}]", "tiers.levels[0].threshold"),
    ("[tiers]\nlevels = [{name = 'A', threshold = 0}, {name = 'B', threshold = 0}]", "tiers.levels[1].threshold"),
    ("[rewards]\nevery_points = 0", "rewards.every_points"),
    ("[expiry]\nmonths = 'soon'", "expiry.months"),
    ("[points]\nx = 1", "points"),
])
def test_invalid_rules_are_refused_naming_the_key(toml: str, key: str) -> None:
    with pytest.raises(ConfigError) as refused:
        LoyaltyRules.from_toml(toml)
    assert refused.value.key == key


def test_rules_round_trip_through_their_stored_form() -> None:
    rules = LoyaltyRules.from_toml("[tiers]\nmeasure = 'lifetime_points'\n[rewards]\nvalue = '7.50'\n")
    assert LoyaltyRules.from_dict(rules.to_dict()) == rules


# --- properties ---------------------------------------------------------------------------------

_refunds = st.lists(st.tuples(st.integers(0, 40), st.decimals("0.01", "300", places=2)), max_size=2)
_orders = st.lists(
    st.tuples(st.integers(0, 500), st.decimals("0", "900", places=2), st.booleans(), st.booleans(), _refunds,
              st.one_of(st.none(), st.integers(0, 60))),
    min_size=1, max_size=6, unique_by=lambda o: o[0])


def _facts(raw: list[tuple]) -> BuyerFacts:
    orders = []
    for i, (day, basis, paid, test, refunds, cancel) in enumerate(raw):
        created = T0 + timedelta(days=day)
        orders.append(OrderFacts(
            order_id=i + 1, created_at=created, basis=basis, total=basis + Decimal("5"), paid=paid, test=test,
            cancelled_at=created + timedelta(days=cancel) if cancel is not None else None,
            refunds=tuple(RefundFacts(refund_id=(i + 1) * 10 + j, amount=amount,
                                      created_at=created + timedelta(days=after))
                          for j, (after, amount) in enumerate(refunds))))
    return BuyerFacts(account_created_at=T0 - timedelta(days=1), orders=tuple(orders))


@settings(max_examples=150, deadline=None)
@given(_orders, st.randoms(use_true_random=False))
def test_any_arrival_order_and_any_replays_end_in_the_same_ledger_never_below_zero(raw: list[tuple],
                                                                                   rng: object) -> None:
    rules = LoyaltyRules(tiers=LoyaltyRules.from_toml(
        "[tiers]\nlevels = [{name='A', threshold=0}, {name='B', threshold=300, multiplier=1.5}]").tiers)
    facts = _facts(raw)
    now = T0 + timedelta(days=900)
    final = owed(facts, rules, now=now, program_start=START)
    # Deliveries arrive in any order, some twice; after each, the ledger is corrected to what is owed so far.
    arrivals = list(facts.orders) + list(facts.orders[:2])
    rng.shuffle(arrivals)  # type: ignore[attr-defined]
    stored: list[Entry] = []
    known: dict[int, OrderFacts] = {}
    for delivery in arrivals:
        known[delivery.order_id] = delivery
        so_far = BuyerFacts(account_created_at=facts.account_created_at,
                            orders=tuple(sorted(known.values(), key=lambda o: o.order_id)))
        stored += corrections(owed(so_far, rules, now=now, program_start=START), stored, now=now)
    assert corrections(final, stored, now=now) == []
    assert sum(e.points for e in stored) == sum(e.points for e in final)
    assert state(final, facts, rules, now=now).balance == sum(e.points for e in final) >= 0
    running = 0
    for entry in final:  # in the order it happened: the balance never dips below zero
        running += entry.points
        assert running >= 0
    shuffled = BuyerFacts(account_created_at=facts.account_created_at, orders=tuple(reversed(facts.orders)))
    assert owed(shuffled, rules, now=now, program_start=START) == final


@settings(max_examples=150, deadline=None)
@given(_orders, st.lists(st.tuples(st.integers(0, 800), st.integers(1, 1500)), max_size=3))
def test_a_reward_costs_its_points_whenever_what_was_earned_before_it_covers_them(
        raw: list[tuple], asked: list[tuple[int, int]]) -> None:
    rules = LoyaltyRules.from_toml("[expiry]\nmonths = 0\n")
    rewards = tuple(Redemption(key=f"reward:R{i}", points=points, at=T0 + timedelta(days=day, hours=1))
                    for i, (day, points) in enumerate(asked))
    facts = _facts(raw)
    facts = BuyerFacts(account_created_at=facts.account_created_at, orders=facts.orders, redemptions=rewards)
    entries = owed(facts, rules, now=T0 + timedelta(days=900), program_start=START)
    running = 0
    for n, entry in enumerate(entries):
        running += entry.points
        assert running >= 0
        if entry.kind == "redemption":
            asked_for = next(r.points for r in rewards if r.key == entry.key)
            earned = sum(e.points for e in entries[:n] if e.kind in ("earn", "bonus"))
            spent = sum(-e.points for e in entries[:n] if e.kind == "redemption")
            assert -entry.points <= asked_for
            if earned - spent >= asked_for:  # reversals dated before it give way, the code keeps its price
                assert -entry.points == asked_for


def test_a_correction_of_a_redemption_is_not_a_second_reward() -> None:
    from mappings import events as ev
    from sync.loyalty import entry_event

    buyer = ev.Buyer(contact_key="c:1", customer_id=1, email="a@example.com", phone=None)
    names = [entry_event(Entry(key, points, "redemption", T0), shop_domain="s", buyer=buyer, balance=0, tier="Bronze",
                         rules=LoyaltyRules(), currency="USD").name
             for key, points in (("reward:ABC", -500), ("reward:ABC#1", 98), ("reward:ABC#2", -98))]
    assert names == ["loyalty_reward_issued", "loyalty_points_earned", "loyalty_points_reversed"]
