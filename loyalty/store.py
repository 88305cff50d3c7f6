"""The ledger's thin store: read a buyer's entries, append the corrections that bring them to what is owed.

The caller's unit of work commits them together with the mirror changes they follow from (DESIGN: mirror
changes, ledger entries, dirty marks and outbox rows commit together or not at all).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import as_utc
from connector.database import COPY_FROM, chunked, insert_new, one_of
from connector.models import LoyaltyEntry
from loyalty.program import Entry, corrections


def stored_entries(session: Session, shop_id: int, contact_keys: Iterable[str]) -> dict[str, list[Entry]]:
    """Each contact's ledger, in the order it was written."""
    found: dict[str, list[Entry]] = defaultdict(list)
    for chunk in chunked(set(contact_keys)):
        rows = session.execute(sa.select(  # plain rows: read only, and far cheaper to load than ORM objects
            col(LoyaltyEntry.contact_key), col(LoyaltyEntry.entry_key), col(LoyaltyEntry.points),
            col(LoyaltyEntry.kind), col(LoyaltyEntry.reason), col(LoyaltyEntry.occurred_at),
            col(LoyaltyEntry.recorded_at)).where(
            col(LoyaltyEntry.shop_id) == shop_id, one_of(col(LoyaltyEntry.contact_key), chunk, session))
            .order_by(col(LoyaltyEntry.id)))
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
    """`append` for many contacts at once (contact key, entry): one statement.

    A recompute writes hundreds of thousands of entries, so the rows go to the driver as plain tuples: on
    SQLite the times are written in the text form SQLAlchemy reads back (UTC), which saves most of the cost.
    """
    if not entries:
        return 0
    sqlite_ = session.get_bind().dialect.name == "sqlite"
    if not sqlite_ and len(entries) >= COPY_FROM:  # COPY, then one INSERT ... SELECT
        insert_new(session, LoyaltyEntry, [
            {"shop_id": shop_id, "contact_key": key, "entry_key": e.key, "kind": e.kind, "points": e.points,
             "reason": e.reason, "occurred_at": e.at, "recorded_at": now} for key, e in entries],
            ["shop_id", "contact_key", "entry_key"], mostly_new=True)  # entries the buyer's ledger lacked
        return len(entries)
    mark = "?" if sqlite_ else "%s"
    stamp = _sqlite_time if sqlite_ else (lambda moment: moment)
    recorded = stamp(now)
    rows = [(shop_id, key, e.key, e.kind, e.points, e.reason, stamp(e.at), recorded) for key, e in entries]
    session.connection().exec_driver_sql(
        f"INSERT INTO loyalty_entries ({_COLUMNS}) VALUES ({', '.join([mark] * 8)}) "
        "ON CONFLICT (shop_id, contact_key, entry_key) DO NOTHING",
        rows)
    return len(rows)


_COLUMNS = "shop_id, contact_key, entry_key, kind, points, reason, occurred_at, recorded_at"


def _sqlite_time(moment: datetime) -> str:
    """The text SQLAlchemy's SQLite DateTime stores (and parses back): the UTC wall time."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.isoformat(" ", "microseconds")


def settle(session: Session, shop_id: int, contact_key: str, owed: Iterable[Entry], *, now: datetime,
           stored: Sequence[Entry] | None = None) -> list[Entry]:
    """Append what the ledger lacks to match `owed`; returns the new entries (nothing on a replay)."""
    if stored is None:
        stored = stored_entries(session, shop_id, [contact_key]).get(contact_key, [])
    new = corrections(owed, stored, now=now)
    append(session, shop_id, contact_key, new, now=now)
    return new
