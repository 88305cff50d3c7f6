"""`connector demo`: a simulated store replayed as signed webhooks through the real endpoint into a simulated Brevo."""

from __future__ import annotations

import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from connector.database import make_engine, unit_of_work, upgrade
from connector.models import Shop
from connector.sandbox.brevo import BrevoSandbox
from connector.sandbox.server import serve_in_thread
from connector.sandbox.shopify import SimulatedStore, StoreSize, WebhookSender
from connector.sandbox.shopify_admin import ShopifyAdminSandbox
from connector.settings import Settings
from connector.shops import ensure_single_store_shop
from loyalty.rules import LoyaltyRules
from sync.worker import Worker
from webhooks.app import create_app

DEMO_SHOP = "demo-store.myshopify.com"
DEMO_SECRET = "demo-webhook-secret"
DEMO_BREVO_KEY = "sandbox-brevo-key"
DEMO_ADMIN_TOKEN = "demo-admin-token"


@dataclass
class DemoSummary:
    webhooks: int = 0
    contacts: int = 0
    events: Counter[str] = field(default_factory=Counter)
    dead_letters: int = 0
    brevo_calls: int = 0
    seconds: float = 0.0
    products: int = 0
    categories: int = 0
    orders: int = 0  # ecommerce orders (one per order status)
    reward_codes: int = 0  # loyalty reward codes created in the simulated Shopify
    points: int = 0  # loyalty points held by all buyers


def run_demo(*, customers: int = 200, seed: int = 7, database_url: str | None = None,
             console: Console | None = None) -> DemoSummary:
    console = console or Console()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="connector-demo-")
    url = database_url or f"sqlite:///{Path(workdir) / 'demo.db'}"
    upgrade(url)
    engine = make_engine(url)
    brevo = BrevoSandbox(api_keys={DEMO_BREVO_KEY})
    brevo_server = serve_in_thread(brevo.app)
    shopify = ShopifyAdminSandbox(tokens={DEMO_ADMIN_TOKEN})
    shopify_server = serve_in_thread(shopify.app)
    settings = Settings(DATABASE_URL=url, SHOPIFY_API_SECRET=DEMO_SECRET, SHOPIFY_SHOP=DEMO_SHOP,
                        SHOPIFY_ACCESS_TOKEN=DEMO_ADMIN_TOKEN, SHOPIFY_ADMIN_URL=shopify_server.url,
                        BREVO_API_KEY=DEMO_BREVO_KEY, BREVO_API_URL=f"{brevo_server.url}/v3",
                        # The simulated history spans 90 days; the demo replays it as if it were live.
                        CONNECTOR_EVENT_FRESHNESS_HOURS=24 * 92, _env_file=None)  # type: ignore[call-arg]
    ensure_single_store_shop(engine, settings)
    with unit_of_work(engine) as session:  # the loyalty program ran through that history, rewards automatic
        back = datetime.now(UTC) - timedelta(days=92)
        session.execute(sa.update(Shop).values(loyalty_rules=LoyaltyRules(reward_automatic=True).to_dict(),
                                               loyalty_started_at=back, loyalty_rules_at=back))
    worker = Worker(engine, settings)
    web = serve_in_thread(create_app(engine, settings, on_stored=worker.wake.set))
    stop = threading.Event()
    worker_thread = threading.Thread(target=worker.run, kwargs={"stop": stop}, daemon=True)
    worker_thread.start()
    summary = DemoSummary()
    try:
        store = SimulatedStore(DEMO_SHOP, size=StoreSize(customers=customers, guests=max(customers // 5, 1)),
                               seed=seed)
        shopify.store = store  # what the reconciliation polls and the backfill read
        deliveries = list(store.deliveries())
        console.print(f"simulated store [bold]{DEMO_SHOP}[/]: {len(store.customers)} customers, "
                      f"{len(store.orders)} orders, {len(store.products)} products, "
                      f"{len(deliveries)} webhooks to send")
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress, httpx.Client(timeout=10) as http:
            sending = progress.add_task("webhooks -> connector", total=len(deliveries))
            sender = WebhookSender(web.url, shop_domain=DEMO_SHOP, secret=DEMO_SECRET, client=http)
            sender.send_all(deliveries, on_sent=lambda d, r: progress.advance(sending))
            summary.webhooks = len(deliveries)
            syncing = progress.add_task("connector -> Brevo", total=len(deliveries))
            while True:
                with engine.connect() as conn:
                    pending = conn.execute(sa.text("SELECT count(*) FROM inbox WHERE status = 'pending'")).scalar_one()
                    backlog = conn.execute(sa.text(
                        "SELECT (SELECT count(*) FROM contacts WHERE dirty OR push_state = 'pending') + "
                        "(SELECT count(*) FROM outbox WHERE status = 'pending') + "
                        "(SELECT count(*) FROM loyalty_rewards WHERE status = 'requested')")).scalar_one()
                progress.update(syncing, completed=len(deliveries) - pending)
                if pending == 0 and backlog == 0:
                    break
                time.sleep(0.2)
    finally:
        stop.set()
        worker.wake.set()
        worker_thread.join(timeout=10)
        web.stop()
        brevo_server.stop()
        shopify_server.stop()
    snapshot = brevo.snapshot()
    summary.contacts = len(snapshot["contacts"])
    summary.events = Counter(e["event_name"] for e in snapshot["events"])
    summary.brevo_calls = len(brevo.calls)
    summary.products, summary.categories = len(snapshot["products"]), len(snapshot["categories"])
    summary.orders = len(snapshot["orders"])
    with engine.connect() as conn:
        dead = conn.execute(sa.text("SELECT source, reference, reason FROM dead_letters")).all()
        summary.points = int(conn.execute(sa.text("SELECT coalesce(sum(points), 0) FROM loyalty_entries"))
                             .scalar_one())
    summary.dead_letters = len(dead)
    summary.reward_codes = len(shopify.discounts)
    summary.seconds = time.monotonic() - started
    _print(console, summary, dead, url)
    engine.dispose()
    return summary


def _print(console: Console, summary: DemoSummary, dead: Sequence[sa.Row[Any]], url: str) -> None:
    table = Table(title="In the simulated Brevo", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("contacts", str(summary.contacts))
    table.add_row("ecommerce products / categories", f"{summary.products} / {summary.categories}")
    table.add_row("ecommerce order statuses", str(summary.orders))
    for name, count in sorted(summary.events.items()):
        table.add_row(f"event {name}", str(count))
    table.add_row("loyalty points held / reward codes created in Shopify",
                  f"{summary.points} / {summary.reward_codes}")
    table.add_row("Brevo API calls", str(summary.brevo_calls))
    table.add_row("dead letters", str(summary.dead_letters))
    console.print(table)
    for row in dead[:10]:
        console.print(f"  dead letter ({row.source} {row.reference}): {row.reason}")
    console.print(f"{summary.webhooks} webhooks synced in {summary.seconds:.1f} s; database: {url}")
