"""Benchmark: N orders end to end (first webhook in -> last Brevo call), idle latency, and Brevo calls per contact.

Run by hand:  .venv/bin/python bench/end_to_end.py [--orders 10000] [--database sqlite|postgres]

Each part runs in its own process, as in production: the simulated Brevo (base-tier rate limits),
`connector web` and `connector worker`. The webhooks are sent by this script over loopback with a few
concurrent connections. Figures are printed as a table; quote medians when repeating.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from connector.database import make_engine, upgrade
from connector.sandbox.server import free_port
from connector.sandbox.shopify import WebhookDelivery, many_orders

SHOP = "bench-store.myshopify.com"
SECRET = "bench-secret"
BREVO_KEY = "sandbox-brevo-key"
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def _process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _fresh_database(kind: str, workdir: Path) -> str:
    """A temporary SQLite file, or the dedicated `bench_e2e` database (never the test suite's)."""
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    from intake import fresh_postgres  # bench/ is on the path when this script runs

    return fresh_postgres(PG_URL, database="bench_e2e")


def _send(client: httpx.Client, url: str, delivery: WebhookDelivery) -> int:
    # These are live orders: triggered now, so they fire automations (the seeded history's own moments
    # are in the past and would be treated as history, correctly sending nothing).
    headers = {**delivery.headers(shop_domain=SHOP, secret=SECRET),
               "X-Shopify-Triggered-At": datetime.now(UTC).isoformat()}
    response = client.post(url, content=delivery.body, headers=headers)
    return response.status_code


def _backlog(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(
            "SELECT (SELECT count(*) FROM inbox WHERE status = 'pending')"
            " + (SELECT count(*) FROM contacts WHERE dirty OR push_state = 'pending')"
            " + (SELECT count(*) FROM outbox WHERE status = 'pending')")).scalar_one())


def run(orders: int, database: str, customers: int | None) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    url = _fresh_database(database, workdir)
    upgrade(url)
    engine = make_engine(url)
    brevo_port, web_port = free_port(), free_port()
    env = {**os.environ, "DATABASE_URL": url, "SHOPIFY_SHOP": SHOP, "SHOPIFY_ACCESS_TOKEN": "bench-token",
           "SHOPIFY_API_SECRET": SECRET, "BREVO_API_KEY": BREVO_KEY,
           "BREVO_API_URL": f"http://127.0.0.1:{brevo_port}/v3", "PORT": str(web_port)}
    python = sys.executable
    figures: dict[str, float] = {}
    with (_process([python, "-m", "connector.sandbox.brevo", "--port", str(brevo_port)], env),
          _process([python, "-c", "from connector.cli import main; main()", "web"], env),
          _process([python, "-c", "from connector.cli import main; main()", "worker"], env),
          httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8)) as client):
        _wait_http(f"http://127.0.0.1:{brevo_port}/_sandbox/state")
        _wait_http(f"http://127.0.0.1:{web_port}/healthz")
        hook = f"http://127.0.0.1:{web_port}/webhooks/shopify"

        # Idle latency: the account is set up by the first order; then single orders into an idle system.
        latencies = []
        for i, delivery in enumerate(many_orders(SHOP, 6, seed=99, customers=6)):
            start = time.monotonic()
            assert _send(client, hook, delivery) == 200
            while _delivered_events(brevo_port) < i + 1:
                time.sleep(0.01)
            latencies.append(time.monotonic() - start)
        figures["idle_latency_s_median"] = sorted(latencies[1:])[len(latencies[1:]) // 2]
        figures["idle_latency_s_max"] = max(latencies[1:])
        figures["first_order_incl_setup_s"] = latencies[0]
        baseline_calls = _calls(brevo_port)

        deliveries = list(many_orders(SHOP, orders, seed=1, customers=customers))
        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            statuses = list(pool.map(lambda d: _send(client, hook, d), deliveries))
        figures["send_s"] = time.monotonic() - start
        assert statuses.count(200) == orders, "some webhooks were refused"
        while _backlog(engine) > 0:
            time.sleep(0.05)
        figures["end_to_end_s"] = time.monotonic() - start
        state = httpx.get(f"http://127.0.0.1:{brevo_port}/_sandbox/state", timeout=60).json()
        calls = {path: n - baseline_calls.get(path, 0) for path, n in state["calls"].items()}
        contacts_calls = sum(n for path, n in calls.items() if path.startswith("/v3/contacts"))
        events = [e for e in state["events"] if e["event_name"] == "order_completed"]
        figures["all_events"] = len(state["events"])
        figures["orders"] = orders
        figures["order_completed_events"] = len(events) - 6
        figures["brevo_contacts"] = len(state["contacts"])
        figures["contact_calls"] = contacts_calls
        figures["event_calls"] = calls.get("/v3/events", 0) + calls.get("/v3/events/batch", 0)
        figures["contacts_per_contact_call"] = (len(state["contacts"]) - 6) / max(contacts_calls, 1)
        figures["http_429"] = state.get("calls_by_status", {}).get("429", 0)
    engine.dispose()
    return figures


def _delivered_events(port: int) -> int:
    """order_completed events Brevo holds (an order also sends first/repeat_order_completed)."""
    state = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=10).json()
    return sum(1 for e in state["events"] if e["event_name"] == "order_completed")


def _calls(port: int) -> dict[str, int]:
    return dict(httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=10).json()["calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=None, help="distinct buyers (default orders / 2)")
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    figures = run(args.orders, args.database, args.customers)
    width = max(len(k) for k in figures)
    for key, value in figures.items():
        print(f"{key:<{width}}  {value:,.3f}" if isinstance(value, float) else f"{key:<{width}}  {value:,}")


if __name__ == "__main__":
    main()
