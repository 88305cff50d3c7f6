"""Reward codes: created in (simulated) Shopify, deducted only once Shopify confirmed them, sent to Brevo."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest
import sqlalchemy as sa

from connector.loyalty_admin import LoyaltyAdminError, ask_reward, configure_loyalty
from tests.integration.harness import SHOP, iter_connector
from tests.integration.test_loyalty_pipeline import Store
from tests.payloads import customer, order

AUTOMATIC = "[rewards]\nautomatic = true\nevery_points = 500\nvalue = 5\n"


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[Store]:
    for connector in iter_connector(engine):
        yield Store(connector)


def _rewards(store: Store) -> list[sa.Row]:
    return store.connector.rows("SELECT code, status, points, discount_id, error FROM loyalty_rewards ORDER BY id")


def _buyer_with(store: Store, total: str) -> None:
    store.post("customers/create", customer(1, "ana@example.com"))
    store.post("orders/create", order(9001, total=total))
    store.sync()


def test_crossing_the_threshold_issues_a_one_time_code_for_that_customer_and_deducts_it(store: Store) -> None:
    configure_loyalty(store.connector.engine, SHOP, AUTOMATIC, now=store.clock.now())
    _buyer_with(store, "530.00")  # 50 signup + 530 + 50 first order = 630
    [reward] = _rewards(store)
    assert reward.status == "issued" and reward.points == 500
    discount = store.connector.shopify.discounts[reward.code.upper()]
    assert discount.id == reward.discount_id
    assert (discount.amount, discount.usage_limit, discount.customers) == ("5.00", 1, ("gid://shopify/Customer/1",))
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 130
    assert store.attributes("ana@example.com")["LOYALTY_REWARD_CODE"] == reward.code
    [(_, issued)] = store.events("loyalty_reward_issued")
    assert (issued["code"], issued["points"], issued["value"], issued["balance"]) == (reward.code, 500, "5.00", 130)
    store.sync()
    assert len(_rewards(store)) == 1  # 130 left: no second code


def test_shopify_unavailable_delays_the_code_and_takes_no_points_until_it_is_created(store: Store) -> None:
    configure_loyalty(store.connector.engine, SHOP, AUTOMATIC, now=store.clock.now())
    store.connector.shopify.faults.extend([503] * 3)  # every retry of the first attempt fails
    store.post("customers/create", customer(1, "ana@example.com"))
    store.post("orders/create", order(9001, total="530.00"))
    worker = store.connector.worker(clock=store.clock)
    for _ in range(4):  # a few passes, not until idle: the reward now waits for its next try
        worker.run_once()
    [reward] = _rewards(store)
    assert reward.status == "requested" and "503" in reward.error
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 630
    store.travel(minutes=1)
    [reward] = _rewards(store)
    assert reward.status == "issued"
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 130


def test_a_code_shopify_already_holds_after_a_crash_is_found_not_made_twice(store: Store) -> None:
    _buyer_with(store, "530.00")
    requested = ask_reward(store.connector.engine, SHOP, "ana@example.com", source="cli", now=store.clock.now())
    # The worker created the code, then died before committing: Shopify holds it, we do not know yet.
    from connector.sandbox.shopify_admin import Discount

    store.connector.shopify.discounts[requested.code.upper()] = Discount(
        id="gid://shopify/DiscountCodeNode/42", code=requested.code, title="t", amount="5.00", customers=(),
        usage_limit=1, starts_at="")
    store.sync()
    [reward] = _rewards(store)
    assert (reward.status, reward.discount_id) == ("issued", "gid://shopify/DiscountCodeNode/42")
    assert len(store.connector.shopify.discounts) == 1
    assert store.attributes("ana@example.com")["LOYALTY_POINTS"] == 130


def test_a_reward_the_balance_does_not_cover_is_refused(store: Store) -> None:
    _buyer_with(store, "100.00")  # 200 points
    with pytest.raises(LoyaltyAdminError, match="has 200 points; a reward takes 500"):
        ask_reward(store.connector.engine, SHOP, "ana@example.com", source="cli", now=store.clock.now())
    assert _rewards(store) == []


def test_a_revoked_shopify_token_pauses_the_shop_and_keeps_the_points(store: Store) -> None:
    configure_loyalty(store.connector.engine, SHOP, AUTOMATIC, now=store.clock.now())
    store.connector.shopify.tokens.clear()
    _buyer_with(store, "530.00")
    [status, reason] = store.connector.rows("SELECT status, paused_reason FROM shops")[0]
    assert status == "paused" and "Shopify refused the access token" in reason
    [reward] = _rewards(store)
    assert reward.status == "requested"
    total = store.connector.rows("SELECT sum(points) FROM loyalty_entries")[0][0]
    assert Decimal(total) == 630
