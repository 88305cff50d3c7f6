"""The tables are the queue: leasing due shops and fencing writes with the lease token. All leasing SQL is here."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from connector.models import UTCDateTime


def _timed(statement: sa.TextClause, *names: str) -> sa.TextClause:
    """Bind timestamps as the columns' own type, so SQLite compares them in the stored text format."""
    return statement.bindparams(*(sa.bindparam(n, type_=UTCDateTime) for n in names))


class LeaseLost(Exception):
    """Another worker holds this shop now: our lease lapsed, so our uncommitted work is dropped."""


# A shop is due when it is not leased by a live worker and has something to do: a lifecycle or privacy
# delivery whatever its status (an uninstalled shop is still erased), anything else only while it is active.
_DUE = """
    (s.lease_expires_at IS NULL OR s.lease_expires_at < :now)
    AND (
        EXISTS (SELECT 1 FROM inbox i WHERE i.shop_domain = s.domain AND i.status = 'lifecycle')
        OR EXISTS (SELECT 1 FROM outbox o WHERE o.shop_id = s.id AND o.target = 'erase' AND o.status = 'pending'
                   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= :now))
        OR s.status = 'active' AND (
        (s.brevo_ready_at IS NULL AND (s.setup_due_at IS NULL OR s.setup_due_at <= :now))
        OR EXISTS (SELECT 1 FROM inbox i WHERE i.shop_domain = s.domain AND i.status = 'pending')
        OR EXISTS (SELECT 1 FROM backfills b WHERE b.shop_id = s.id AND b.status = 'staged')
        OR EXISTS (SELECT 1 FROM contacts c WHERE c.shop_id = s.id AND c.dirty)
        OR EXISTS (SELECT 1 FROM contacts c WHERE c.shop_id = s.id AND c.import_process IS NOT NULL
                   AND c.visible_at <= :now)
        OR EXISTS (SELECT 1 FROM contacts c WHERE c.shop_id = s.id AND c.push_state = 'pending'
                   AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= :now))
        OR EXISTS (SELECT 1 FROM outbox o WHERE o.shop_id = s.id AND o.status = 'pending'
                   AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= :now))
        OR s.rfm_due_at IS NULL OR s.rfm_due_at <= :now
        OR EXISTS (SELECT 1 FROM contacts c WHERE c.shop_id = s.id AND c.lifecycle_due_at <= :now)
        OR EXISTS (SELECT 1 FROM loyalty_rewards r WHERE r.shop_id = s.id AND r.status = 'requested'
                   AND (r.next_attempt_at IS NULL OR r.next_attempt_at <= :now))
        {polls}
    ))
"""
# With reconciliation on: a poll is due, or the shop has none yet (its first lease creates them).
_POLLS = """
        OR EXISTS (SELECT 1 FROM poll_states p WHERE p.shop_id = s.id AND p.due_at <= :now)
        OR NOT EXISTS (SELECT 1 FROM poll_states p WHERE p.shop_id = s.id)
"""

_LEASE_POSTGRES = """
    UPDATE shops SET lease_owner = :owner, lease_token = :token, lease_expires_at = :expires
    WHERE id IN (
        SELECT s.id FROM shops s WHERE {due}
        ORDER BY s.lease_owner IS NOT NULL, s.lease_expires_at NULLS FIRST, s.id
        LIMIT :limit FOR UPDATE SKIP LOCKED
    )
    RETURNING id, domain
"""

# SQLite serialises writers (our transactions begin IMMEDIATE), so the sub-select cannot race.
_LEASE_SQLITE = """
    UPDATE shops SET lease_owner = :owner, lease_token = :token, lease_expires_at = :expires
    WHERE id IN (
        SELECT s.id FROM shops s WHERE {due}
        ORDER BY s.lease_owner IS NOT NULL, s.lease_expires_at IS NOT NULL, s.lease_expires_at, s.id
        LIMIT :limit
    )
    RETURNING id, domain
"""


_LEASE = {(dialect, polls): _timed(sa.text(template.format(due=_DUE.format(polls=_POLLS if polls else ""))),
                                   "now", "expires")
          for dialect, template in (("sqlite", _LEASE_SQLITE), ("postgresql", _LEASE_POSTGRES))
          for polls in (False, True)}

_EXTEND = _timed(sa.text("""
    UPDATE shops SET lease_expires_at = :expires
    WHERE id = :shop_id AND lease_token = :token
"""), "expires")

_RELEASE = _timed(sa.text("""
    UPDATE shops SET lease_owner = NULL, lease_token = NULL, lease_expires_at = :until
    WHERE id = :shop_id AND lease_token = :token
"""), "until")

_HAS_WORK = _timed(sa.text(f"SELECT count(*) FROM shops s WHERE {_DUE.format(polls='')}"), "now")


@dataclass(frozen=True, kw_only=True)
class Lease:
    shop_id: int
    domain: str
    token: str
    owner: str


def lease_due_shops(engine: Engine, *, owner: str, now: datetime, seconds: float, limit: int = 4,
                    polls: bool = False) -> list[Lease]:
    """Lease up to `limit` shops that have work due; with `polls`, a due reconciliation poll is work too."""
    token = secrets.token_hex(8)
    statement = _LEASE["sqlite" if engine.dialect.name == "sqlite" else "postgresql", polls]
    with Session(engine) as session, session.begin():
        rows = session.execute(statement, {"owner": owner, "token": token, "now": now, "limit": limit,
                                           "expires": now + timedelta(seconds=seconds)}).all()
    return [Lease(shop_id=r.id, domain=r.domain, token=token, owner=owner) for r in rows]


def fence(session: Session, lease: Lease, *, now: datetime, seconds: float) -> None:
    """Inside a unit of work, just before commit: extend the lease, or abort if it was taken from us."""
    result = session.execute(_EXTEND, {"expires": now + timedelta(seconds=seconds), "shop_id": lease.shop_id,
                                       "token": lease.token})
    if result.rowcount != 1:  # type: ignore[attr-defined]
        raise LeaseLost(f"lease on shop {lease.domain} was lost")


def release(engine: Engine, lease: Lease, *, rest: float = 0.0, now: datetime | None = None) -> None:
    """Give the shop up; with `rest`, it is not due for that many seconds (held by nobody)."""
    until = now + timedelta(seconds=rest) if rest and now is not None else None
    with Session(engine) as session, session.begin():
        session.execute(_RELEASE, {"shop_id": lease.shop_id, "token": lease.token, "until": until})


def due_shop_count(engine: Engine, *, now: datetime) -> int:
    with Session(engine) as session:
        return int(session.execute(_HAS_WORK, {"now": now}).scalar_one())
