"""Brevo's webhooks in: unsubscribes, hard bounces, spam complaints and SMS STOPs, for two-way consent.

    POST /webhooks/brevo/{token}

The token names the shop and proves the sender knows the app's secret: `{shop id}.{HMAC of it}` (the previous
secret's HMAC is accepted too during a rotation). `connector shops brevo-webhook --shop D` prints the address to
give Brevo. Anything else gets 401. An opt-out is stored in the inbox (topic `brevo/opt_out`, unique per event:
a redelivery is a no-op) and applied by the worker; other events (opens, clicks, deliveries) are answered 200
and not kept. Nothing else happens inside the request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from connector.database import insert_new, unit_of_work
from connector.models import InboxEntry, Shop
from connector.settings import Settings
from mappings.brevo_webhooks import EMAIL_OPT_OUTS, SMS_OPT_OUTS

BREVO_PATH = "/webhooks/brevo"
OPT_OUT_TOPIC = "brevo/opt_out"
MAX_BODY = 1024 * 1024


def brevo_webhook_token(shop_id: int, secret: str) -> str:
    mac = hmac.new(secret.encode(), f"brevo-webhook:{shop_id}".encode(), hashlib.sha256).hexdigest()[:40]
    return f"{shop_id}.{mac}"


def _shop_of(token: str, secrets: Sequence[str]) -> int | None:
    shop, _, _ = token.partition(".")
    if not (shop.isascii() and shop.isdigit()) or len(shop) > 12:
        return None
    ok = False
    for secret in secrets:  # constant time, whichever secret matches
        ok |= hmac.compare_digest(brevo_webhook_token(int(shop), secret).encode(), token.encode("utf-8", "replace"))
    return int(shop) if ok else None


def brevo_routes(engine: Engine, settings: Settings) -> list[Route]:
    def store(shop_id: int, items: list[dict[str, Any]]) -> str | None:
        """The shop's domain once its opt-outs are stored; None for a shop that is not there."""
        now = datetime.now(UTC)
        with unit_of_work(engine) as session:
            domain = session.execute(sa.select(col(Shop.domain)).where(col(Shop.id) == shop_id)).scalar_one_or_none()
            if domain is None:
                return None
            insert_new(session, InboxEntry, [
                {"shop_domain": domain, "topic": OPT_OUT_TOPIC, "source": "brevo", "status": "pending",
                 "event_id": "brevo:" + hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()[:60],
                 "body": json.dumps(item), "received_at": now} for item in items], ["shop_domain", "event_id"])
        return str(domain)

    async def receive(request: Request) -> Response:
        shop_id = _shop_of(request.path_params["token"], settings.webhook_secrets)
        if shop_id is None:
            return JSONResponse({"error": "unknown or forged webhook address"}, status_code=401)
        body = await request.body()
        if len(body) > MAX_BODY:
            return JSONResponse({"error": f"body larger than {MAX_BODY} bytes"}, status_code=413)
        try:
            payload = json.loads(body)
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, status_code=400)
        items = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(item, dict) for item in items):
            return JSONResponse({"error": "expected a JSON object or a list of them"}, status_code=400)
        opt_outs = [item for item in items
                    if str(item.get("event") or "").strip().lower() in {*EMAIL_OPT_OUTS, *SMS_OPT_OUTS}]
        if opt_outs and await run_in_threadpool(store, shop_id, opt_outs) is None:
            return JSONResponse({"error": "unknown or forged webhook address"}, status_code=401)
        return JSONResponse({"stored": len(opt_outs), "ignored": len(items) - len(opt_outs)})

    return [Route(f"{BREVO_PATH}/{{token}}", receive, methods=["POST"])]
