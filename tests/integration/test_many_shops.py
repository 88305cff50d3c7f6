"""Many shops in one connector: two workers share fifty shops, each with its own Shopify token and Brevo key;
a shop whose Brevo key is refused, or whose Shopify token is revoked, is paused with the reason and the others
carry on."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

from sqlalchemy.engine import Engine

from connector.clock import ShiftedClock
from connector.shops import add_shop
from sync.worker import Worker
from tests import payloads as p
from tests.integration.harness import ADMIN_TOKEN, BREVO_KEY, iter_connector

SHOPS = 50
REFUSED_KEY, REVOKED_TOKEN = 7, 13  # the shops whose Brevo key, or Shopify token, no longer works


def _domain(n: int) -> str:
    return f"shop-{n:02d}.myshopify.com"


def test_fifty_shops_sync_side_by_side_and_a_refused_credential_pauses_only_its_own_shop(engine: Engine) -> None:
    keys = {f"brevo-key-{n}" for n in range(SHOPS) if n != REFUSED_KEY} | {BREVO_KEY}
    for connector in iter_connector(engine, brevo_keys=keys, reconcile_minutes=5):
        settings = connector.settings.model_copy(update={"connector_secret_key": "test-secret-key"})
        for n in range(SHOPS):
            add_shop(engine, settings, domain=_domain(n), brevo_api_key=f"brevo-key-{n}",
                     access_token="revoked-token" if n == REVOKED_TOKEN else ADMIN_TOKEN)
        for n in range(SHOPS):
            email = f"buyer@shop{n:02d}.example"
            headers = {"X-Shopify-Shop-Domain": _domain(n)}
            assert connector.post("customers/create", p.customer(1000 + n, email), headers=headers).status_code == 200
            assert connector.post("orders/create", p.order(5000 + n, customer_id=1000 + n, email=email,
                                                           total=f"{10 + n}.00"), headers=headers).status_code == 200

        # Two workers side by side; then again ten minutes on, when every shop's first reconciliation poll is
        # due: the revoked token is found there.
        clock = ShiftedClock(datetime.now(UTC))
        workers = [Worker(engine, settings, policy=connector.policy, owner=f"worker-{i}", clock=clock)
                   for i in range(2)]
        for _ in range(2):
            threads = [threading.Thread(target=w.run, kwargs={"until_idle": True, "idle_sleep": 0.05})
                       for w in workers]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=600)
            assert not any(thread.is_alive() for thread in threads)
            clock.advance(minutes=10)

        paused = {domain: reason for domain, reason in connector.rows(
            "SELECT domain, paused_reason FROM shops WHERE status <> 'active'")}
        assert set(paused) == {_domain(REFUSED_KEY), _domain(REVOKED_TOKEN)}
        assert "Brevo" in paused[_domain(REFUSED_KEY)] and "Shopify" in paused[_domain(REVOKED_TOKEN)]

        completed = {e["identifiers"]["email_id"] for e in connector.events("order_completed")}
        # The revoked token's shop delivered its webhooks before the poll found the token refused.
        working = [n for n in range(SHOPS) if n != REFUSED_KEY]
        assert completed == {f"buyer@shop{n:02d}.example" for n in working}
        for n in working:
            contact = connector.contact(f"buyer@shop{n:02d}.example")
            assert contact["attributes"]["ORDER_COUNT"] == 1
            assert str(contact["attributes"]["TOTAL_SPENT"]) in (f"{10 + n}", f"{10 + n}.0", f"{10 + n}.00")
        # Both workers took part: the shops were shared, not worked by one while the other waited.
        assert all(w.stats.applied > 0 for w in workers)
