"""Re-queueing dead letters once their cause is fixed."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.clock import SystemClock
from connector.database import unit_of_work
from connector.models import Contact, DeadLetter, InboxEntry, OutboxEntry


def retry_dead_letters(engine: Engine, ids: Sequence[int]) -> int:
    now = SystemClock().now()
    count = 0
    with unit_of_work(engine) as session:
        for letter in session.execute(sa.select(DeadLetter).where(DeadLetter.id.in_(ids),  # type: ignore[union-attr]
                                                                 DeadLetter.resolved_at.is_(None))).scalars():  # type: ignore[union-attr]
            if letter.source == "inbox":
                inbox_id = int(letter.reference.split(":")[1])
                session.execute(sa.update(InboxEntry).where(InboxEntry.id == inbox_id)  # type: ignore[arg-type]
                                .values(status="pending", error=None))
            elif letter.source == "event":
                session.execute(sa.update(OutboxEntry).where(
                    OutboxEntry.shop_id == letter.shop_id,  # type: ignore[arg-type]
                    OutboxEntry.idempotency_key == letter.reference)  # type: ignore[arg-type]
                    .values(status="pending", attempts=0, next_attempt_at=None))
            elif letter.source == "contact":
                session.execute(sa.update(Contact).where(
                    Contact.shop_id == letter.shop_id, Contact.contact_key == letter.reference)  # type: ignore[arg-type]
                    .values(push_state="idle", dirty=True, pending=None, pending_hash=None, attempts=0))
            letter.resolved_at = now
            count += 1
    return count
