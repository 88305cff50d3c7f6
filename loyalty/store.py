"""The ledger's thin store: read a buyer's entries, append the corrections that bring them to what is owed.

The caller's unit of work commits them together with the mirror changes they follow from (DESIGN: mirror
changes, ledger entries, dirty marks and outbox rows commit together or not at all).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.database import chunked
from connector.models import LoyaltyEntry
from loyalty.program import Entry, corrections


def stored_entries(session: Session, shop_id: int, contact_keys: Iterable[str]) -> dict[str, list[Entry]]:
    """Each contact's ledger, in the order it was written."""
    found: dict[str, list[Entry]] = defaultdict(list)
    for chunk in chunked(set(contact_keys)):
        rows = session.execute(sa.select(LoyaltyEntry).where(
            col(LoyaltyEntry.shop_id) == shop_id, col(LoyaltyEntry.contact_key).in_(chunk))
            .order_by(col(LoyaltyEntry.id))).scalars()
        for row in rows:
            at = as_utc(row.occurred_at) or as_utc(row.recorded_at)
            assert at is not None
            found[row.contact_key].append(Entry(key=row.entry_key, points=row.points, kind=row.kind, at=at,
                                                reason=row.reason or ""))
    return dict(found)


def append(session: Session, shop_id: int, contact_key: str, entries: Sequence[Entry], *, now: datetime) -> int:
    """Write new entries; one already there (same contact and source key) is left alone."""
    return append_many(session, shop_id, [(contact_key, e) for e in entries], now=now)


def append_many(session: Session, shop_id: int, entries: Sequence[tuple[str, Entry]], *, now: datetime) -> int:
    """`append` for many contacts at once (contact key, entry): one statement."""
    if not entries:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    table = LoyaltyEntry.__table__  # type: ignore[attr-defined]
    rows = [{"shop_id": shop_id, "contact_key": key, "entry_key": e.key, "kind": e.kind, "points": e.points,
             "reason": e.reason, "occurred_at": e.at, "recorded_at": now} for key, e in entries]
    session.execute(insert(table).on_conflict_do_nothing(index_elements=["shop_id", "contact_key", "entry_key"]),
                    rows)
    return len(rows)


def settle(session: Session, shop_id: int, contact_key: str, owed: Iterable[Entry], *, now: datetime,
           stored: Sequence[Entry] | None = None) -> list[Entry]:
    """Append what the ledger lacks to match `owed`; returns the new entries (nothing on a replay)."""
    if stored is None:
        stored = stored_entries(session, shop_id, [contact_key]).get(contact_key, [])
    new = corrections(owed, stored, now=now)
    append(session, shop_id, contact_key, new, now=now)
    return new
