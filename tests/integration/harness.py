"""A running connector for end-to-end tests: the real webhook endpoint and worker, a simulated Brevo, over loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.sandbox.brevo import BrevoLimits, BrevoSandbox
from connector.sandbox.server import RunningServer, serve_in_thread
from connector.sandbox.shopify_admin import ShopifyAdminSandbox
from connector.settings import Settings
from connector.shops import ensure_single_store_shop
from sync.push import PushPolicy
from sync.worker import Worker
from webhooks.app import create_app
from webhooks.intake import sign

SHOP = "test-store.myshopify.com"
SECRET = "test-webhook-secret"
BREVO_KEY = "sandbox-brevo-key"
ADMIN_TOKEN = "test-admin-token"
CLIENT_ID = "test-client-id"  # the public app's client id (its secret is SECRET)
PUBLIC_URL = "https://connector.example.com"  # where Shopify would reach the connector
SECRET_KEY = "test-secret-key"  # CONNECTOR_SECRET_KEY: stored tokens and keys are sealed with it


@dataclass
class Connector:
    engine: Engine
    brevo: BrevoSandbox
    brevo_server: RunningServer
    web: RunningServer
    settings: Settings
    http: httpx.Client
    shopify: ShopifyAdminSandbox
    shopify_server: RunningServer
    policy: PushPolicy = field(default_factory=PushPolicy)
    sequence: int = 0

    def post(self, topic: str, payload: Mapping[str, Any] | bytes, *, event_id: str | None = None,
             secret: str = SECRET, triggered_at: datetime | None = None,
             headers: Mapping[str, str] | None = None) -> httpx.Response:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.sequence += 1
        all_headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Hmac-Sha256": sign(body, secret),
            "X-Shopify-Shop-Domain": SHOP,
            "X-Shopify-API-Version": "2026-01",
            "X-Shopify-Webhook-Id": f"wh-{self.sequence}",
            "X-Shopify-Event-Id": event_id or f"ev-{self.sequence}",
            "X-Shopify-Triggered-At": (triggered_at or datetime.now(UTC)).isoformat(),
        }
        all_headers.update(headers or {})
        return self.http.post(f"{self.web.url}/webhooks/shopify", content=body, headers=all_headers)

    def worker(self, **kwargs: Any) -> Worker:
        return Worker(self.engine, self.settings, policy=self.policy, **kwargs)

    def sync(self, **kwargs: Any) -> Worker:
        worker = self.worker(**kwargs)
        worker.run(until_idle=True, idle_sleep=0.05)
        return worker

    def rows(self, query: str, **params: Any) -> list[sa.Row[Any]]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.text(query), params).all())

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        with self.brevo.lock:
            return [dict(e) for e in self.brevo.events if name is None or e["event_name"] == name]

    def contact(self, email: str) -> dict[str, Any]:
        found = self.brevo.find_contact(email=email)
        assert found is not None, f"no Brevo contact {email}"
        return found


def start_connector(engine: Engine, *, limits: BrevoLimits | None = None, policy: PushPolicy | None = None,
                    brevo_keys: set[str] | None = None, brevo_key: str = BREVO_KEY,
                    reconcile_minutes: float = 0) -> Connector:
    """Reconciliation polls are off unless asked for: most tests drive Shopify's side through webhooks only."""
    brevo = BrevoSandbox(api_keys=brevo_keys or {BREVO_KEY}, limits=limits)
    brevo_server = serve_in_thread(brevo.app)
    shopify = ShopifyAdminSandbox(tokens={ADMIN_TOKEN}, client_id=CLIENT_ID, client_secret=SECRET)
    shopify_server = serve_in_thread(shopify.app)
    url = engine.url.render_as_string(hide_password=False)
    settings = Settings(DATABASE_URL=url, SHOPIFY_API_KEY=CLIENT_ID, SHOPIFY_API_SECRET=SECRET, SHOPIFY_SHOP=SHOP,
                        CONNECTOR_SECRET_KEY=SECRET_KEY, CONNECTOR_PUBLIC_URL=PUBLIC_URL,
                        SHOPIFY_ACCESS_TOKEN=ADMIN_TOKEN, SHOPIFY_ADMIN_URL=shopify_server.url,
                        BREVO_API_KEY=brevo_key,
                        BREVO_API_URL=f"{brevo_server.url}/v3", CONNECTOR_LEASE_SECONDS=5,
                        CONNECTOR_RECONCILE_MINUTES=reconcile_minutes,
                        _env_file=None)  # type: ignore[call-arg]
    ensure_single_store_shop(engine, settings)
    web = serve_in_thread(create_app(engine, settings))
    return Connector(engine=engine, brevo=brevo, brevo_server=brevo_server, web=web, settings=settings,
                     http=httpx.Client(timeout=10), shopify=shopify, shopify_server=shopify_server,
                     policy=policy or PushPolicy(lease_seconds=5))


def stop_connector(connector: Connector) -> None:
    connector.http.close()
    connector.web.stop()
    connector.brevo_server.stop()
    connector.shopify_server.stop()


def iter_connector(engine: Engine, **kwargs: Any) -> Iterator[Connector]:
    connector = start_connector(engine, **kwargs)
    try:
        yield connector
    finally:
        stop_connector(connector)
