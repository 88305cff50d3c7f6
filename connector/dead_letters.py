"""Re-queueing dead letters once their cause is fixed."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector.clock import SystemClock
from connector.database import unit_of_work
from connector.models import Contact, DeadLetter, InboxEntry, OutboxEntry


def retry_dead_letters(engine: Engine, ids: Sequence[int]) -> int:
    now = SystemClock().now()
    count = 0
    with unit_of_work(engine) as session:
        for letter in session.execute(sa.select(DeadLetter).where(col(DeadLetter.id).in_(ids),
                                                                 col(DeadLetter.resolved_at).is_(None))).scalars():
            if letter.source == "inbox":
                inbox_id = int(letter.reference.split(":")[1])
                session.execute(sa.update(InboxEntry).where(col(InboxEntry.id) == inbox_id)
                                .values(status="pending", error=None))
            elif letter.source == "event":
                session.execute(sa.update(OutboxEntry).where(
                    col(OutboxEntry.shop_id) == letter.shop_id,
                    col(OutboxEntry.idempotency_key) == letter.reference)
                    .values(status="pending", attempts=0, next_attempt_at=None))
            elif letter.source == "contact":
                session.execute(sa.update(Contact).where(
                    col(Contact.shop_id) == letter.shop_id, col(Contact.contact_key) == letter.reference)
                    .values(push_state="idle", dirty=True, pending=None, pending_hash=None, attempts=0))
            letter.resolved_at = now
            count += 1
    return count
