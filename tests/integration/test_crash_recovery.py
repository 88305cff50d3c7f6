"""A worker killed (SIGKILL) in the middle of a run: a restarted one converges to the same Brevo state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import sqlalchemy as sa

from tests.integration.harness import BREVO_KEY, SHOP, iter_connector
from tests.payloads import order

ORDERS = 150


def _worker_process(url: str, brevo_url: str, *, until_idle: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "DATABASE_URL": url, "SHOPIFY_SHOP": SHOP, "SHOPIFY_ACCESS_TOKEN": "test-admin-token",
           "BREVO_API_KEY": BREVO_KEY, "BREVO_API_URL": brevo_url, "CONNECTOR_LEASE_SECONDS": "2",
           "CONNECTOR_RECONCILE_MINUTES": "0"}  # no Shopify Admin API here: webhooks only
    args = [sys.executable, "-c", "from connector.cli import main; main()", "worker"]
    if until_idle:
        args.append("--until-idle")
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_a_worker_killed_mid_run_and_restarted_converges(engine: sa.Engine) -> None:
    for connector in iter_connector(engine):
        for i in range(ORDERS):
            connector.post("orders/create", order(5000 + i, customer_id=100 + i % 50,
                                                  email=f"buyer{i % 50}@example.com", number=2000 + i,
                                                  total=f"{10 + i}.00", created=i, updated=i))
        url = engine.url.render_as_string(hide_password=False)
        brevo_url = f"{connector.brevo_server.url}/v3"
        first = _worker_process(url, brevo_url, until_idle=False)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(c.path == "/v3/contacts/import" for c in connector.brevo.calls):
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)  # no clean-up, no lease release
        first.wait(timeout=10)
        assert first.returncode == -signal.SIGKILL
        delivered_before = len(connector.events("order_completed"))
        assert delivered_before < ORDERS, "the worker finished before it could be killed"

        second = _worker_process(url, brevo_url, until_idle=True)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 0, err.decode()

        completed = Counter(e["event_properties"]["order_id"] for e in connector.events("order_completed"))
        assert set(completed) == {str(5000 + i) for i in range(ORDERS)}
        # At least once: only what was in flight at the kill may have gone twice.
        assert sum(completed.values()) - ORDERS <= 1000
        for buyer in range(50):
            attributes = connector.contact(f"buyer{buyer}@example.com")["attributes"]
            mine = [10 + i for i in range(ORDERS) if i % 50 == buyer]
            assert attributes["ORDER_COUNT"] == len(mine)
            assert attributes["TOTAL_SPENT"] == sum(mine)
        statuses = {r.status for r in connector.rows("SELECT DISTINCT status FROM inbox")}
        assert statuses == {"applied"}
