"""Shop-wide figures, recomputed daily: RFM quintiles and the median cadence of repeat buyers.

The builder scores each contact against the thresholds stored here; this step only decides which
contacts' scores moved and marks them dirty, so segment changes are announced in one place (the builder).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.database import chunked
from connector.models import Contact, Shop
from mappings.profile import TENTH
from mappings.rfm import RfmInput, RfmThresholds, score, thresholds
from mappings.shop_config import ShopConfig


@dataclass(frozen=True, kw_only=True)
class Recomputed:
    buyers: int
    moved: int  # contacts whose RFM score changed and will be rebuilt
    median_days: Decimal | None
    thresholds: RfmThresholds | None


def recompute_shop(session: Session, shop: Shop, now: datetime) -> Recomputed:
    assert shop.id is not None
    rows = session.execute(sa.select(col(Contact.contact_key), col(Contact.order_count), col(Contact.total_spent),
                                     col(Contact.last_order_at), col(Contact.days_between_orders),
                                     col(Contact.rfm_score))
                           .where(col(Contact.shop_id) == shop.id, col(Contact.merged_into).is_(None),
                                  sa.or_(col(Contact.order_count) > 0, col(Contact.rfm_score).is_not(None)))).all()
    buyers = {r.contact_key: RfmInput(last_order_at=as_utc(r.last_order_at), order_count=r.order_count,  # type: ignore[arg-type]
                                      total_spent=r.total_spent)
              for r in rows if r.order_count > 0 and r.last_order_at is not None}
    new = thresholds(buyers.values(), now)
    cadences = [r.days_between_orders for r in rows if r.days_between_orders is not None and r.order_count > 0]
    median = Decimal(statistics.median(cadences)).quantize(TENTH, ROUND_HALF_UP) if cadences else None
    moved = [r.contact_key for r in rows
             if (score(buyers[r.contact_key], new, now).code if new and r.contact_key in buyers else None)
             != r.rfm_score]
    if len(moved) > len(rows) // 4:
        # Many moved (a shop's first day, a big shift): one statement for all buyers beats thousands of keys;
        # a rebuilt contact whose body did not change sends nothing.
        session.execute(sa.update(Contact).where(
            col(Contact.shop_id) == shop.id, col(Contact.merged_into).is_(None),
            sa.or_(col(Contact.order_count) > 0, col(Contact.rfm_score).is_not(None))).values(dirty=True))
    else:
        for chunk in chunked(moved):
            session.execute(sa.update(Contact).where(col(Contact.shop_id) == shop.id,
                                                     col(Contact.contact_key).in_(chunk))
                            .values(dirty=True))
    hours = ShopConfig.from_dict(shop.config).lifecycle.rfm_recompute_hours
    session.execute(sa.update(Shop).where(col(Shop.id) == shop.id).values(
        rfm_thresholds=new.to_json() if new else None, median_days_between=median,
        rfm_due_at=now + timedelta(hours=hours)))
    return Recomputed(buyers=len(buyers), moved=len(moved), median_days=median, thresholds=new)


def mark_due_lifecycle(session: Session, shop_id: int, now: datetime) -> int:
    """Contacts with a trigger due are rebuilt: the builder emits what fell due since it last looked."""
    result = session.execute(sa.update(Contact).where(
        col(Contact.shop_id) == shop_id, col(Contact.lifecycle_due_at) <= now, col(Contact.dirty).is_(False),
        col(Contact.merged_into).is_(None))
        .values(dirty=True))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
