"""Two-way consent, Shopify's side: an opt-out heard from Brevo (an unsubscribe, a hard bounce, a spam complaint,
an SMS STOP) is written to the customer's marketing consent in Shopify, when the shop lets Brevo's opt-outs
count there (`[consent]` in its configuration). The call happens outside any transaction; the outbox row (target
`shopify_consent`) is marked delivered once Shopify confirmed. Shopify then sends the consent webhook back: the
contact already remembers that Brevo holds the opt-out, so nothing goes to Brevo again."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector.clock import Clock
from connector.database import unit_of_work
from connector.models import OUTBOX_PENDING, DeadLetter, OutboxEntry
from connector.shopify import ShopifyAuthFailed, ShopifyClient, ShopifyError, ShopifyRetriable
from sync.apply import SHOPIFY_CONSENT
from sync.push import pause_shop
from sync.queue import Lease

log = logging.getLogger("connector.consent")

BATCH = 50
MAX_BACKOFF = timedelta(minutes=30)


def due_consent_updates(engine: Engine, shop_id: int, clock: Clock) -> list[OutboxEntry]:
    with unit_of_work(engine) as session:
        rows = session.execute(sa.select(OutboxEntry).where(
            col(OutboxEntry.shop_id) == shop_id, col(OutboxEntry.target) == SHOPIFY_CONSENT, OUTBOX_PENDING,
            sa.or_(col(OutboxEntry.next_attempt_at).is_(None), col(OutboxEntry.next_attempt_at) <= clock.now()))
            .order_by(col(OutboxEntry.id)).limit(BATCH)).scalars().all()
        session.expunge_all()
    return list(rows)


def postpone_consent(engine: Engine, shop_id: int, clock: Clock, reason: str) -> None:
    """Nothing can be written now (no token): the due updates wait five minutes, with the reason."""
    with unit_of_work(engine) as session:
        session.execute(sa.update(OutboxEntry).where(
            col(OutboxEntry.shop_id) == shop_id, col(OutboxEntry.target) == SHOPIFY_CONSENT,
            OUTBOX_PENDING).values(next_attempt_at=clock.now() + timedelta(minutes=5), last_error=reason))


def write_consent(engine: Engine, lease: Lease, client: ShopifyClient, clock: Clock) -> int:
    """Send the shop's due consent updates to Shopify; returns how many Shopify took."""
    done = 0
    for entry in due_consent_updates(engine, lease.shop_id, clock):
        body = entry.body
        try:
            client.update_marketing_consent(int(body["customer_id"]), channel=str(body["channel"]),
                                            state=str(body["state"]), at=str(body["at"]))
        except ShopifyAuthFailed as exc:
            pause_shop(engine, lease.shop_id, exc)
        except ShopifyRetriable as exc:
            delay = min(timedelta(seconds=30 * 2 ** entry.attempts), MAX_BACKOFF)
            _settle(engine, entry, status="pending", error=str(exc), next_at=clock.now() + delay)
            log.warning("shop %s: consent update waits (%s); next try in %s", lease.domain, exc, delay)
            continue
        except ShopifyError as exc:
            reason = f"Shopify refused the consent update: {exc}"
            _settle(engine, entry, status="dead", error=reason)
            with unit_of_work(engine) as session:
                session.add(DeadLetter(shop_id=lease.shop_id, shop_domain=lease.domain, source="event",
                                       reference=entry.idempotency_key, topic=entry.event_name, reason=reason,
                                       payload=json.dumps(body), created_at=clock.now()))
            continue
        _settle(engine, entry, status="delivered", delivered_at=clock.now())
        done += 1
    return done


def _settle(engine: Engine, entry: OutboxEntry, *, status: str, error: str | None = None, **values: object) -> None:
    with unit_of_work(engine) as session:
        session.execute(sa.update(OutboxEntry).where(col(OutboxEntry.id) == entry.id).values(
            status=status, last_error=error, attempts=entry.attempts + (status != "delivered"),
            next_attempt_at=values.get("next_at"), delivered_at=values.get("delivered_at")))
