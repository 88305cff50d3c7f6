"""Reconciliation polls end to end: changes no webhook announced are read from the simulated Admin API over
loopback, page by page, and applied as history; the bookmark never passes what was not stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector.brevo import BrevoClient
from connector.clock import FixedClock, ShiftedClock, as_utc
from connector.database import unit_of_work
from connector.models import Order, PollState, Product
from connector.sandbox.shopify import SimulatedStore, StoreSize
from connector.shopify import ShopifyClient
from sync.backfill import run_backfill
from sync.reconcile import Line, count_report
from tests.integration.harness import ADMIN_TOKEN, BREVO_KEY, SHOP, Connector, iter_connector
from tests.integration.test_cli import _connector

START = datetime(2026, 8, 1, tzinfo=UTC)
NOW = datetime(2026, 11, 1, tzinfo=UTC)  # after the simulated store's history


@pytest.fixture
def connector(engine: Engine) -> Iterator[Connector]:
    yield from iter_connector(engine, reconcile_minutes=5)


@pytest.fixture
def store(connector: Connector) -> SimulatedStore:
    simulated = SimulatedStore(SHOP, size=StoreSize(customers=30, guests=6, products=8), start=START)
    connector.shopify.store = simulated
    connector.shopify.bulk_seconds = 0.05
    client = ShopifyClient(SHOP, ADMIN_TOKEN, api_version="2026-01", admin_url=connector.shopify_server.url)
    run_backfill(connector.engine, client, SHOP, poll_seconds=0.02, clock=FixedClock(NOW))
    return simulated


def _sync(connector: Connector, clock: ShiftedClock) -> None:
    connector.worker(clock=clock).run(until_idle=True, idle_sleep=0.05)


def _stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _polls(connector: Connector) -> dict[str, tuple[datetime | None, str | None, str | None, int]]:
    """Per resource: the bookmark (to the minute: the worker's clock runs on), cursor, error, objects found."""
    def minute(moment: datetime | None) -> datetime | None:
        return moment.replace(second=0, microsecond=0) if moment else None
    with unit_of_work(connector.engine) as session:
        states = session.execute(sa.select(PollState)).scalars().all()
    return {r.resource: (minute(as_utc(r.bookmark)), r.cursor, r.error, r.last_found) for r in states}


def test_a_change_no_webhook_announced_is_found_by_the_next_poll_and_applied_as_history(
        connector: Connector, store: SimulatedStore) -> None:
    clock = ShiftedClock(NOW)  # real time from NOW (imports settle, leases lapse), and jumps ahead
    _sync(connector, clock)  # the backfill applied; polls start where it began
    assert {name: state[0] for name, state in _polls(connector).items()} == dict.fromkeys(
        ("customers", "products", "orders", "checkouts"), NOW)
    customer = store.customers[3]
    customer.update(first_name="Renamed", updated_at=_stamp(NOW + timedelta(minutes=1)))  # the webhook was lost
    order = next(o for o in store.orders if o.get("customer") and not o["test"] and o["cancelled_at"] is None)
    order.update(fulfillment_status="fulfilled", updated_at=_stamp(NOW + timedelta(minutes=2)))
    events_before = len(connector.events())

    clock.advance(minutes=10)
    _sync(connector, clock)
    assert connector.contact(customer["email"])["attributes"]["FIRSTNAME"] == "Renamed"
    [row] = connector.rows("SELECT fulfillment_status FROM orders WHERE order_id = :i", i=order["id"])
    assert row.fulfillment_status == "fulfilled"
    assert len(connector.events()) == events_before  # history: no automation fires
    with connector.brevo.lock:
        latest = [o for o in connector.brevo.orders if o["id"] == str(order["id"])][-1]
    assert (latest["status"], latest["historical"]) == ("fulfilled", True)
    polls = _polls(connector)
    assert polls["customers"] == (NOW + timedelta(minutes=8), None, None, 1)  # the pass ends 2 min before it began
    assert polls["orders"] == (NOW + timedelta(minutes=8), None, None, 1)
    assert [r.source for r in connector.rows("SELECT source FROM inbox WHERE source = 'poll'")] == ["poll", "poll"]

    clock.advance(minutes=10)
    _sync(connector, clock)  # nothing changed since: nothing queued, the bookmark moves on
    assert _polls(connector)["customers"] == (NOW + timedelta(minutes=18), None, None, 0)
    assert len(connector.rows("SELECT 1 FROM inbox WHERE source = 'poll'")) == 2


def test_a_pass_cut_short_by_an_outage_keeps_its_pages_and_goes_on_at_the_next_one(
        connector: Connector, store: SimulatedStore) -> None:
    clock = ShiftedClock(NOW)  # real time from NOW (imports settle, leases lapse), and jumps ahead
    _sync(connector, clock)
    changed = [o for o in store.orders][:60]  # three pages of 25
    for i, order in enumerate(changed):
        order["updated_at"] = _stamp(NOW + timedelta(seconds=30 + i))
    # The customers' and products' pages and the first page of orders go through (one throttled on the way);
    # the second page of orders meets an outage that outlasts the client's retries.
    connector.shopify.faults.extend(["throttle", "ok", "ok", "ok", 503, 503, 503])
    clock.advance(minutes=10)
    _sync(connector, clock)
    orders = _polls(connector)["orders"]
    assert orders[0] == NOW and orders[1] is not None and orders[3] == 25  # bookmark held, cursor kept
    assert "503" in (orders[2] or "")
    assert len(connector.rows("SELECT 1 FROM inbox WHERE source = 'poll'")) == 25

    clock.advance(minutes=1)  # a failed poll is retried within a minute, from its next page
    _sync(connector, clock)
    assert _polls(connector)["orders"] == (NOW + timedelta(minutes=8), None, None, 60)
    assert len(connector.rows("SELECT 1 FROM inbox WHERE source = 'poll'")) == 60


def test_a_revoked_token_pauses_the_shop_and_its_polls_stop(connector: Connector, store: SimulatedStore) -> None:
    clock = ShiftedClock(NOW)  # real time from NOW (imports settle, leases lapse), and jumps ahead
    _sync(connector, clock)
    connector.shopify.tokens.clear()
    calls = len(connector.shopify.calls)
    clock.advance(minutes=10)
    _sync(connector, clock)
    [shop] = connector.rows("SELECT status, paused_reason FROM shops")
    assert shop.status == "paused" and "access token" in shop.paused_reason
    connector.shopify.tokens.add(ADMIN_TOKEN)  # a poll now would be answered, and counted
    clock.advance(minutes=10)
    _sync(connector, clock)
    assert len(connector.shopify.calls) == calls  # a paused shop is not polled


def _report(connector: Connector) -> dict[str, Line]:
    shopify = ShopifyClient(SHOP, ADMIN_TOKEN, api_version="2026-01", admin_url=connector.shopify_server.url)
    brevo = BrevoClient(BREVO_KEY, base_url=f"{connector.brevo_server.url}/v3")
    return {line.name: line for line in count_report(connector.engine, SHOP, shopify, brevo, poll_seconds=0.02)}


def test_the_count_report_agrees_after_a_backfill_and_names_every_id_lost_on_the_way(
        connector: Connector, store: SimulatedStore) -> None:
    _sync(connector, ShiftedClock(NOW))
    report = _report(connector)
    abandoned = [c for c in store.checkouts if not c.get("completed_at")]
    assert {name: (line.shopify, line.connector) for name, line in report.items() if name != "contacts"} == {
        "customers": (len(store.customers), len(store.customers)), "products": (len(store.products),) * 2,
        "orders": (len(store.orders),) * 2, "checkouts": (len(abandoned),) * 2}
    assert report["orders"].brevo == report["orders"].brevo_expected > 0
    assert report["contacts"].brevo == report["contacts"].connector > len(store.customers)  # guests too
    assert [line for line in report.values() if not line.agrees] == []

    # Losses that every step reported as a success: a contact gone from Brevo, an order gone from the connector.
    lost_contact = store.customers[5]
    assert httpx.delete(f"{connector.brevo_server.url}/v3/contacts/{lost_contact['email']}",
                        headers={"api-key": BREVO_KEY}).status_code == 204
    lost_order = store.orders[7]
    with unit_of_work(connector.engine) as session:
        session.execute(sa.delete(Order).where(col(Order.order_id) == lost_order["id"]))
    report = _report(connector)
    assert report["orders"].missing == [str(lost_order["id"])] and not report["orders"].agrees
    assert report["contacts"].missing == [f"c:{lost_contact['id']}"] and not report["contacts"].agrees
    assert report["customers"].agrees and report["products"].agrees


def test_the_reconcile_command_prints_the_counts_and_fails_on_a_gap(
        connector: Connector, store: SimulatedStore, tmp_path: Path) -> None:
    _sync(connector, ShiftedClock(NOW))
    env = {"DATABASE_URL": connector.engine.url.render_as_string(hide_password=False), "SHOPIFY_SHOP": SHOP,
           "SHOPIFY_ACCESS_TOKEN": ADMIN_TOKEN, "SHOPIFY_ADMIN_URL": connector.shopify_server.url,
           "BREVO_API_KEY": BREVO_KEY, "BREVO_API_URL": f"{connector.brevo_server.url}/v3", "COLUMNS": "160"}
    agreed = _connector("reconcile", "--shop", SHOP, env=env, cwd=tmp_path)
    assert agreed.returncode == 0, agreed.stderr
    assert "agree" in agreed.stdout and f"{len(store.customers)}" in agreed.stdout
    product = store.products[0]
    with unit_of_work(connector.engine) as session:
        session.execute(sa.delete(Product).where(col(Product.product_id) == product["id"]))
    gap = _connector("reconcile", "--shop", SHOP, "--resources", "products", env=env, cwd=tmp_path)
    assert gap.returncode == 1
    assert f"products missing from the connector: {product['id']}" in gap.stdout
    assert "do not agree" in gap.stderr
    unknown = _connector("reconcile", "--shop", SHOP, "--resources", "carts", env=env, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown resource 'carts'" in unknown.stderr
