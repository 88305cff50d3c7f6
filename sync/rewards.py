"""Reward codes: a requested reward becomes a one-time discount code in Shopify, and only once Shopify confirmed
it are its points deducted (a redemption entry), announced (`loyalty_reward_issued`) and carried to Brevo
(`LOYALTY_REWARD_CODE`). The Shopify call happens outside any transaction; the code was chosen when the
reward was requested, so a retry after a crash finds the code Shopify already holds instead of making another.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector.clock import Clock
from connector.database import unit_of_work
from connector.models import Contact, DeadLetter, LoyaltyReward, Shop
from connector.shopify import ShopifyAuthFailed, ShopifyClient, ShopifyError, ShopifyRetriable
from loyalty import program as lp
from sync.loyalty import record_entry
from sync.profiles import ShopContext, load_buyers
from sync.push import pause_shop
from sync.queue import Lease, fence

log = logging.getLogger("connector.rewards")

BATCH = 25
MAX_BACKOFF = timedelta(minutes=30)


def due_rewards(engine: Engine, shop_id: int, clock: Clock) -> list[LoyaltyReward]:
    with unit_of_work(engine) as session:
        rows = session.execute(sa.select(LoyaltyReward).where(
            col(LoyaltyReward.shop_id) == shop_id, col(LoyaltyReward.status) == "requested",
            sa.or_(col(LoyaltyReward.next_attempt_at).is_(None), col(LoyaltyReward.next_attempt_at) <= clock.now()))
            .order_by(col(LoyaltyReward.id)).limit(BATCH)).scalars().all()
        session.expunge_all()
    return list(rows)


def issue_rewards(engine: Engine, lease: Lease, client: ShopifyClient, clock: Clock, *, lease_seconds: float
                  ) -> int:
    """Create the shop's requested codes in Shopify; returns how many were issued."""
    issued = 0
    for reward in due_rewards(engine, lease.shop_id, clock):
        covered, customer_id = _still_covered(engine, lease.shop_id, reward, clock)
        if not covered:
            _fail(engine, lease, reward, clock, "the balance no longer covers this reward (points were taken "
                                                "back meanwhile); no code was created")
            continue
        try:
            discount_id = client.create_discount_code(
                code=reward.code, title=f"Loyalty reward {reward.code}", amount=reward.value,
                customer_id=customer_id, starts_at=clock.now().isoformat())
        except ShopifyAuthFailed as exc:
            pause_shop(engine, lease.shop_id, exc)
        except ShopifyRetriable as exc:
            _retry_later(engine, reward, clock, str(exc))
            continue
        except ShopifyError as exc:
            _fail(engine, lease, reward, clock, f"Shopify refused the code: {exc}")
            continue
        _confirmed(engine, lease, reward, discount_id, clock, lease_seconds=lease_seconds)
        issued += 1
    return issued


def _still_covered(engine: Engine, shop_id: int, reward: LoyaltyReward, clock: Clock) -> tuple[bool, int | None]:
    with unit_of_work(engine) as session:
        shop = session.get(Shop, shop_id)
        contact = session.get(Contact, (shop_id, reward.contact_key))
        if shop is None or contact is None:
            return False, None
        [view] = load_buyers(session, ShopContext.of(shop, clock.now()), [contact])
        balance = view.loyalty.state.balance if view.loyalty else 0
        return balance >= reward.points, contact.customer_id


def _confirmed(engine: Engine, lease: Lease, reward: LoyaltyReward, discount_id: str, clock: Clock, *,
               lease_seconds: float) -> None:
    """Shopify holds the code: deduct the points, announce the reward, rebuild the contact - one commit."""
    now = clock.now()
    with unit_of_work(engine) as session:
        row = session.get(LoyaltyReward, reward.id)
        shop = session.get(Shop, lease.shop_id)
        contact = session.get(Contact, (lease.shop_id, reward.contact_key))
        if row is None or shop is None or contact is None or row.status != "requested":
            return
        [view] = load_buyers(session, ShopContext.of(shop, now), [contact])
        assert view.loyalty is not None
        entry = lp.Entry(f"reward:{row.code}", -row.points, lp.REDEMPTION, now, f"reward code {row.code}")
        record_entry(session, shop, contact, view.loyalty, entry, now=now)
        row.status, row.discount_id, row.issued_at, row.error = "issued", discount_id, now, None
        fence(session, lease, now=now, seconds=lease_seconds)


def _retry_later(engine: Engine, reward: LoyaltyReward, clock: Clock, reason: str) -> None:
    delay = min(timedelta(seconds=30 * 2 ** reward.attempts), MAX_BACKOFF)
    with unit_of_work(engine) as session:
        session.execute(sa.update(LoyaltyReward).where(col(LoyaltyReward.id) == reward.id).values(
            attempts=reward.attempts + 1, next_attempt_at=clock.now() + delay, error=reason))
    log.warning("reward %s: Shopify not reachable yet (%s); next try in %s", reward.code, reason, delay)


def _fail(engine: Engine, lease: Lease, reward: LoyaltyReward, clock: Clock, reason: str) -> None:
    with unit_of_work(engine) as session:
        session.execute(sa.update(LoyaltyReward).where(col(LoyaltyReward.id) == reward.id).values(
            status="failed", error=reason))
        session.add(DeadLetter(shop_id=lease.shop_id, shop_domain=lease.domain, source="reward",
                               reference=f"reward:{reward.code}", reason=reason,
                               payload=json.dumps({"contact_key": reward.contact_key, "points": reward.points,
                                                   "value": str(reward.value)}), created_at=clock.now()))
