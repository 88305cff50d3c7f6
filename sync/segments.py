"""Shop-wide figures, recomputed daily: RFM quintiles and the median cadence of repeat buyers.

The builder scores each contact against the thresholds stored here; this step only decides which
contacts' scores moved and marks them dirty, so segment changes are announced in one place (the builder).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.database import chunked, one_of
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
    """The shop's thresholds and median cadence from every buyer, then the contacts whose score they move marked
    dirty. The buyers are read twice, as a stream (their figures, then their scores): what stays in memory is
    the values the quintiles are cut from, not a row per buyer."""
    assert shop.id is not None
    where = (col(Contact.shop_id) == shop.id, col(Contact.merged_into).is_(None),
             sa.or_(col(Contact.order_count) > 0, col(Contact.rfm_score).is_not(None)))

    def buyers(*columns: Any) -> Iterator[Any]:
        return iter(session.execute(sa.select(
            col(Contact.contact_key), col(Contact.order_count), col(Contact.total_spent),
            col(Contact.last_order_at), *columns).where(*where).execution_options(yield_per=2000)))

    def rfm_input(row: Any) -> RfmInput | None:
        if row.order_count > 0 and row.last_order_at is not None:
            return RfmInput(last_order_at=as_utc(row.last_order_at), order_count=row.order_count,  # type: ignore[arg-type]
                            total_spent=row.total_spent)
        return None

    cadences: list[Decimal] = []
    rows = 0

    def figures() -> Iterator[RfmInput]:
        nonlocal rows
        for row in buyers(col(Contact.days_between_orders)):
            rows += 1
            if row.days_between_orders is not None and row.order_count > 0:
                cadences.append(row.days_between_orders)
            found = rfm_input(row)
            if found is not None:
                yield found

    new = thresholds(figures(), now)
    median = Decimal(statistics.median(cadences)).quantize(TENTH, ROUND_HALF_UP) if cadences else None
    del cadences[:]
    moved: list[str] = []
    for row in buyers(col(Contact.rfm_score)):
        found = rfm_input(row)
        if (score(found, new, now).code if new and found is not None else None) != row.rfm_score:
            moved.append(row.contact_key)
    # Contacts already dirty are left as they are: after a backfill every buyer is (each is built once, with
    # its score), and rewriting 100,000 rows to set what they hold cost PostgreSQL a new version of each.
    if len(moved) > rows // 4:
        # Many moved (a shop's first day, a big shift): one statement for all buyers beats thousands of keys;
        # a rebuilt contact whose body did not change sends nothing.
        session.execute(sa.update(Contact).where(*where, col(Contact.dirty).is_(False)).values(dirty=True))
    else:
        for chunk in chunked(moved):
            session.execute(sa.update(Contact).where(col(Contact.shop_id) == shop.id,
                                                     one_of(col(Contact.contact_key), chunk, session),
                                                     col(Contact.dirty).is_(False))
                            .values(dirty=True))
    hours = ShopConfig.from_dict(shop.config).lifecycle.rfm_recompute_hours
    session.execute(sa.update(Shop).where(col(Shop.id) == shop.id).values(
        rfm_thresholds=new.to_json() if new else None, median_days_between=median,
        rfm_due_at=now + timedelta(hours=hours)))
    return Recomputed(buyers=new.buyers if new else 0, moved=len(moved), median_days=median, thresholds=new)


def mark_due_lifecycle(session: Session, shop_id: int, now: datetime) -> int:
    """Contacts with a trigger due are rebuilt: the builder emits what fell due since it last looked."""
    result = session.execute(sa.update(Contact).where(
        col(Contact.shop_id) == shop_id, col(Contact.lifecycle_due_at) <= now, col(Contact.dirty).is_(False),
        col(Contact.merged_into).is_(None))
        .values(dirty=True))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
