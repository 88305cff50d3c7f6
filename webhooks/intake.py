"""Shopify webhook intake: verify the HMAC over the raw body, store the delivery once, answer. Nothing else."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.models import UTCDateTime

_INSERT = sa.text("""
    INSERT INTO inbox (shop_domain, event_id, topic, webhook_id, triggered_at, api_version, source, body,
                       status, received_at)
    VALUES (:shop_domain, :event_id, :topic, :webhook_id, :triggered_at, :api_version, 'webhook', :body,
            'pending', :received_at)
    ON CONFLICT (shop_domain, event_id) DO NOTHING
""").bindparams(sa.bindparam("triggered_at", type_=UTCDateTime), sa.bindparam("received_at", type_=UTCDateTime))


def sign(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_hmac(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """Constant-time check against the current secret and, during a rotation, the previous one."""
    if not header or not secrets:
        return False
    try:
        given = base64.b64decode(header.strip(), validate=True)
    except ValueError:
        return False
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        ok |= hmac.compare_digest(expected, given)
    return ok


def parse_triggered_at(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class IntakeResult:
    status: int
    message: str
    stored: bool = False


class Intake:
    """Stores verified deliveries in the inbox. Used by the HTTP route; holds no Shopify or Brevo client."""

    def __init__(self, engine: Engine, secrets: Sequence[str], *, max_body_bytes: int,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.secrets = tuple(secrets)
        self.max_body_bytes = max_body_bytes
        self.on_stored = on_stored

    def accept(self, body: bytes, header: Callable[[str], str | None]) -> IntakeResult:
        if len(body) > self.max_body_bytes:
            return IntakeResult(413, f"body larger than {self.max_body_bytes} bytes")
        hmac_header = header("x-shopify-hmac-sha256") or header("shopify-hmac-sha256")
        if not verify_hmac(body, hmac_header, self.secrets):
            return IntakeResult(401, "missing or invalid HMAC signature")
        topic = header("x-shopify-topic") or header("shopify-topic")
        shop = header("x-shopify-shop-domain") or header("shopify-shop-domain")
        if not topic:
            return IntakeResult(400, "missing X-Shopify-Topic header")
        if not shop:
            return IntakeResult(400, "missing X-Shopify-Shop-Domain header")
        webhook_id = header("x-shopify-webhook-id") or header("shopify-webhook-id")
        event_id = header("x-shopify-event-id") or header("shopify-event-id") or webhook_id
        if not event_id:
            return IntakeResult(400, "missing X-Shopify-Event-Id and X-Shopify-Webhook-Id headers")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")  # kept; the applier will quarantine it with the reason
        params = {
            "shop_domain": shop.strip().lower()[:255], "event_id": event_id.strip()[:100],
            "topic": topic.strip().lower()[:100], "webhook_id": (webhook_id or "")[:100] or None,
            "triggered_at": parse_triggered_at(header("x-shopify-triggered-at") or header("shopify-triggered-at")),
            "api_version": (header("x-shopify-api-version") or header("shopify-api-version") or "")[:20] or None,
            "body": text, "received_at": datetime.now(UTC),
        }
        with self.engine.begin() as conn:
            stored = conn.execute(_INSERT, params).rowcount == 1
        if stored and self.on_stored is not None:
            self.on_stored()
        return IntakeResult(200, "stored" if stored else "duplicate", stored=stored)
