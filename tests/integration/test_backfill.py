"""History backfill through Shopify bulk operations, end to end: the simulated Admin API serves a simulated
store's JSONL over loopback, the worker applies it as history, the simulated Brevo receives the contacts."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session
from sqlmodel import col

from connector import jsontext
from connector.clock import FixedClock, as_utc
from connector.models import Backfill, Contact
from connector.sandbox.shopify import SimulatedStore, StoreSize
from connector.sandbox.shopify_bulk import birth_date
from connector.shopify import ShopifyClient
from mappings import ecommerce
from mappings.events import Buyer
from mappings.lifecycle import BIRTHDAY, CART_ABANDONED, REPLENISHMENT_DUE, REVIEW_REQUEST_DUE, WINBACK_DUE
from mappings.shopify_graphql import RESOURCES
from sync import backfill, profiles
from sync import worker as worker_module
from sync.apply import TOPICS, ApplyContext, apply_order
from sync.backfill import BackfillError, run_backfill
from sync.helper import Helper
from tests.integration.harness import ADMIN_TOKEN, BREVO_KEY, SECRET, SHOP, Connector
from tests.integration.test_cli import _connector
from tests.integration.test_ecommerce import _as_history
from tests.payloads import order

START = datetime(2026, 8, 1, tzinfo=UTC)


@pytest.fixture
def store(connector: Connector) -> SimulatedStore:
    simulated = SimulatedStore(SHOP, size=StoreSize(customers=30, guests=6, products=8), start=START)
    connector.shopify.store = simulated
    connector.shopify.bulk_seconds = 0.05
    return simulated


def _client(connector: Connector, token: str = ADMIN_TOKEN) -> ShopifyClient:
    return ShopifyClient(SHOP, token, api_version="2026-01", admin_url=connector.shopify_server.url)


def _backfill(connector: Connector, **kwargs: object) -> list[tuple[str, str, int]]:
    results = run_backfill(connector.engine, _client(connector), SHOP, poll_seconds=0.02,
                           **kwargs)  # type: ignore[arg-type]
    return [(r.resource, r.status, r.objects) for r in results]


def _count(connector: Connector, table: str) -> int:
    return int(connector.rows(f"SELECT count(*) FROM {table}")[0][0])


def _every_buyer_has_their_totals(connector: Connector, store: SimulatedStore) -> None:
    assert _count(connector, "orders") == len(store.orders)
    assert _count(connector, "refunds") == sum(len(o.get("refunds") or []) for o in store.orders)
    # The simulation's own ledger; an order refunded in full is not a purchase for the connector (net 0 either way).
    refunded = Counter(o["email"] for o in store.orders if o["financial_status"] == "refunded"
                       and o["cancelled_at"] is None and not o["test"])
    for email, totals in store.expected().buyers.items():
        attributes = connector.contact(email)["attributes"]
        assert attributes["ORDER_COUNT"] == totals.order_count - refunded[email], email
        assert Decimal(str(attributes["TOTAL_SPENT"])) == totals.total_spent, email
    assert _count(connector, "dead_letters") == 0
    _history_fired_no_automation(connector)


def _history_fired_no_automation(connector: Connector) -> None:
    """No event tells of the past. The store's dates are fixed and the clock is real, so a lifecycle moment may fall
    due in the seconds between applying a buyer and building them: that one is news (due after the connector first
    knew the buyer), and its event goes."""
    known = {}
    for row in connector.rows("SELECT email, phone, created_at FROM contacts"):
        created = row.created_at if isinstance(row.created_at, datetime) else datetime.fromisoformat(row.created_at)
        known[row.email or row.phone] = as_utc(created)
    moments = {WINBACK_DUE, REPLENISHMENT_DUE, REVIEW_REQUEST_DUE, CART_ABANDONED, BIRTHDAY}
    for event in connector.events():
        buyer = event["identifiers"].get("email_id") or event["identifiers"].get("phone_id")
        assert event["event_name"] in moments, event
        assert datetime.fromisoformat(event["event_date"]) >= known[buyer], event  # type: ignore[operator]


def test_a_backfill_brings_every_buyer_with_correct_totals_and_fires_no_automation(
        connector: Connector, store: SimulatedStore) -> None:
    abandoned = [c for c in store.checkouts if not c.get("completed_at")]
    assert _backfill(connector) == [("customers", "staged", len(store.customers)),
                                    ("products", "staged", len(store.products)),
                                    ("orders", "staged", len(store.orders)),
                                    ("checkouts", "staged", len(abandoned))]
    assert _count(connector, "inbox") == 0  # the workers apply the staged objects themselves
    connector.sync()
    assert connector.rows("SELECT resource, status, queued FROM backfills ORDER BY id") == [
        ("customers", "done", len(store.customers)), ("products", "done", len(store.products)),
        ("orders", "done", len(store.orders)), ("checkouts", "done", len(abandoned))]
    _every_buyer_has_their_totals(connector, store)  # and history fires no automation
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders)
    # Brevo's ecommerce orders arrive as history, in batches, each order once in its latest state.
    sent = connector.brevo.orders
    assert sent and all(o["historical"] and o["batchId"] for o in sent)
    assert sorted(int(o["id"]) for o in sent) == sorted(
        o["id"] for o in store.orders if not o["test"] and (o.get("email") or o.get("phone") or o.get("customer")))
    assert _count(connector, "backfill_rows") == 0  # the staged file is gone once applied
    collections = connector.rows("SELECT collections FROM products WHERE product_type IS NOT NULL")
    assert collections and all(row[0] for row in collections)
    birthdays = {row.customer_id: row.birthday for row in connector.rows("SELECT customer_id, birthday FROM customers")}
    assert {i: b for i, b in birthdays.items() if b} == {
        c["id"]: birth_date(c["id"]) for c in store.customers if c["id"] % 4 == 0}  # from `facts.birth_date`


def test_a_webhook_without_metafields_keeps_the_birthday_a_backfill_read(
        connector: Connector, store: SimulatedStore) -> None:
    customer = next(c for c in store.customers if c["id"] % 4 == 0)
    _backfill(connector, resources=["customers"])
    connector.sync()
    connector.post("customers/update", {**customer, "updated_at": "2026-11-01T00:00:00Z"})
    connector.sync()
    [row] = connector.rows("SELECT birthday FROM customers WHERE customer_id = :i", i=customer["id"])
    assert row.birthday == birth_date(customer["id"])


def test_every_file_is_staged_then_applied_resource_after_resource_buyers_before_their_orders(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    steps: list[tuple[str, str]] = []
    run_backfill(connector.engine, _client(connector), SHOP, poll_seconds=0.02,
                 progress=lambda p: steps.append((p.resource, p.step)))
    staging = [i for i, (_, step) in enumerate(steps) if step == "staging"]
    staged = [i for i, (_, step) in enumerate(steps) if step == "staged"]
    assert {r for r, step in steps if step == "staging"} == {"customers", "products", "orders", "checkouts"}
    assert max(staging) < min(staged)
    assert [r for r, step in steps if step == "staged"] == ["customers", "products", "orders", "checkouts"]
    taken: list[str] = []
    take = backfill.take_history

    def taking(*args: Any, **kwargs: Any) -> Any:
        chunk = take(*args, **kwargs)
        if chunk is not None:
            taken.append(chunk.resource.name)
        return chunk

    monkeypatch.setattr(backfill, "take_history", taking)
    monkeypatch.setattr("sync.worker.HISTORY_BATCH", 7)  # each file in several chunks
    connector.sync()
    order = [name for n, name in enumerate(taken) if n == 0 or taken[n - 1] != name]
    assert order == ["customers", "products", "orders", "checkouts"] and len(taken) > 8


def test_staging_leaves_no_thread_behind_whether_it_ends_or_is_cut_off(
        connector: Connector, store: SimulatedStore) -> None:
    # On SQLite a thread copies each staged chunk out of the write-ahead log while the next one is read.
    def checkpointers() -> set[threading.Thread]:  # an intake's (of an earlier test) lives as long as its process
        return {t for t in threading.enumerate() if t.name == "wal-checkpointer"}

    before = checkpointers()
    assert _backfill(connector, resources=["customers"]) == [("customers", "staged", len(store.customers))]
    connector.shopify.bulk_faults.append("truncate")
    assert _backfill(connector, resources=["orders"]) == [("orders", "failed", 0)]
    assert checkpointers() <= before
    [row] = connector.rows("SELECT count(*) AS n FROM backfill_rows WHERE parent IS NULL AND line > 0")
    assert row.n > len(store.customers)  # the customers' lines and what the cut-off file gave before the cut


def test_running_a_finished_backfill_again_changes_nothing(connector: Connector, store: SimulatedStore) -> None:
    clock = FixedClock(datetime.now(UTC))  # RFM recency moves with time: that would be news of its own
    connector.policy = replace(connector.policy, import_settle_seconds=0.0)  # imports count at once, time still
    _backfill(connector, resources=["customers", "orders"], clock=clock)
    connector.sync(clock=clock)
    tables = ("customers", "orders", "order_lines", "refunds", "contacts", "outbox", "consent_history")
    counts, brevo_calls = [_count(connector, t) for t in tables], len(connector.brevo.calls)
    bodies = connector.rows("SELECT contact_key, sent_hash FROM contacts ORDER BY contact_key")
    assert _backfill(connector, resources=["customers", "orders"], clock=clock) == [
        ("customers", "staged", len(store.customers)), ("orders", "staged", len(store.orders))]
    connector.sync(clock=clock)
    assert [_count(connector, t) for t in tables] == counts
    assert connector.rows("SELECT contact_key, sent_hash FROM contacts ORDER BY contact_key") == bodies
    assert [c.path for c in connector.brevo.calls[brevo_calls:] if c.path.startswith(("/v3/contacts", "/v3/orders"))
            and c.method != "GET"] == []


def test_a_download_cut_off_mid_line_is_refused_and_the_next_run_reads_on(
        connector: Connector, store: SimulatedStore) -> None:
    connector.shopify.bulk_faults.append("truncate")
    [(resource, status, queued)] = _backfill(connector, resources=["orders"])
    assert (resource, status, queued) == ("orders", "failed", 0)
    [row] = connector.rows("SELECT status, staged, error FROM backfills WHERE resource = 'orders'")
    assert row.status == "staging" and row.staged > 0 and "cut off" in row.error
    connector.sync()
    assert _count(connector, "orders") == 0  # a file not staged whole is not applied
    assert _backfill(connector, resources=["orders"]) == [("orders", "staged", len(store.orders))]
    connector.sync()
    assert _count(connector, "orders") == len(store.orders)


def _lose_staged_lines(connector: Connector) -> None:
    """What PostgreSQL's crash recovery does to the unlogged table of staged lines."""
    with connector.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM backfill_rows"))


def _every_order_arrives_whole(connector: Connector, store: SimulatedStore) -> None:
    """The orders' backfill, run again, finishes; once applied, every order is there with all its lines."""
    assert _backfill(connector, resources=["orders"]) == [("orders", "staged", len(store.orders))]
    connector.sync()
    assert _count(connector, "orders") == len(store.orders)
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders)
    assert _count(connector, "backfill_rows") == 0


def _bulk_queries(connector: Connector) -> int:
    return connector.shopify.calls.count("bulkOperationRunQuery")


def test_staged_lines_lost_in_a_database_crash_are_read_again_with_a_new_bulk_query_and_nothing_is_missing(
        connector: Connector, store: SimulatedStore) -> None:
    connector.shopify.bulk_faults.append("truncate")
    assert _backfill(connector, resources=["orders"]) == [("orders", "failed", 0)]
    _lose_staged_lines(connector)
    queries = _bulk_queries(connector)
    _every_order_arrives_whole(connector, store)
    # Not the old file again: it would bring back customers erased since it was made.
    assert _bulk_queries(connector) == queries + 1


def test_staged_lines_lost_while_a_worker_applies_them_end_the_backfill_with_the_reason_and_a_new_run_brings_the_rest(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _backfill(connector, resources=["orders"]) == [("orders", "staged", len(store.orders))]
    monkeypatch.setattr("sync.worker.HISTORY_BATCH", 10)
    take = backfill.take_history
    chunks: list[int] = []

    def losing_after_two_chunks(*args: Any, **kwargs: Any) -> Any:
        if len(chunks) == 2:
            _lose_staged_lines(connector)  # the database restarted between two chunks
        chunk = take(*args, **kwargs)
        chunks.append(len(chunk.objects) if chunk else 0)
        return chunk

    monkeypatch.setattr(backfill, "take_history", losing_after_two_chunks)
    connector.sync()
    [row] = connector.rows("SELECT status, queued, error FROM backfills")
    assert (row.status, row.queued) == ("failed", 20) and "staged lines of the bulk file were lost" in row.error
    assert _count(connector, "orders") == 20  # what was applied stays; the rest was not taken for the end
    monkeypatch.setattr(backfill, "take_history", take)
    _every_order_arrives_whole(connector, store)


def test_staged_lines_lost_while_the_backfill_runs_stop_it_with_the_reason_instead_of_a_short_history(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # The database restarts between two chunks: what was staged is gone, which must not read as a shorter file.
    monkeypatch.setattr(backfill, "STAGE_CHUNK", 10)
    chunks: list[int] = []

    def after_each_chunk(progress: backfill.Progress) -> None:
        if progress.step == "staging":
            chunks.append(progress.done)
            if len(chunks) == 2:
                _lose_staged_lines(connector)

    [result] = run_backfill(connector.engine, _client(connector), SHOP, resources=["orders"], poll_seconds=0.02,
                            progress=after_each_chunk)
    assert result.status == "failed" and "staged lines of the bulk file were lost" in (result.error or "")
    connector.sync()
    assert _count(connector, "orders") == 0
    _every_order_arrives_whole(connector, store)


@pytest.mark.parametrize(("chunk", "most"), [(10_000, 40_000), (10, 40), (2, 3)],
                         ids=["one chunk", "chunks of 10 lines", "chunks cut within an order"])
def test_nested_lines_are_staged_in_their_object_s_row_unless_their_chunk_ended_before_them(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch, chunk: int, most: int) -> None:
    monkeypatch.setattr(backfill, "STAGE_CHUNK", chunk)
    monkeypatch.setattr(backfill, "STAGE_CHUNK_MOST", most)
    lines = sum(len(o["line_items"]) for o in store.orders)  # one line each, and one per order
    assert _backfill(connector, resources=["orders"]) == [("orders", "staged", len(store.orders))]
    [row] = connector.rows("SELECT count(*) AS n, count(parent) AS apart FROM backfill_rows WHERE line > 0")
    if chunk > len(store.orders) + lines:  # one chunk: every order's row holds its lines
        assert (row.n, row.apart) == (len(store.orders), 0)
    else:  # Shopify may write an object's nested lines after the next object's line, past the chunk's end
        assert 0 < row.apart < lines and row.n == len(store.orders) + row.apart
    [staged] = connector.rows("SELECT staged FROM backfills")
    assert staged.staged == len(store.orders) + lines
    if connector.engine.dialect.name == "postgresql":  # stored as they are: rows that live minutes (migration 0022)
        [row] = connector.rows("SELECT count(*) FILTER (WHERE pg_column_compression(body) IS NOT NULL) AS compressed, "
                               "max(octet_length(body)) AS longest FROM backfill_rows")
        assert row.compressed == 0 and row.longest > 2100  # past the 2 KB from which it would compress a row
    connector.sync()
    _every_buyer_has_their_totals(connector, store)
    assert _count(connector, "order_lines") == lines and _count(connector, "backfill_rows") == 0


def test_a_file_whose_first_line_was_cut_off_is_read_again_from_its_start(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = ShopifyClient.bulk_lines
    downloads: list[str] = []

    def cut_at_first_line(self: ShopifyClient, url: str, *, skip: int = 0) -> Iterator[tuple[int, bytes]]:
        downloads.append(url)
        if len(downloads) == 1:
            yield 1, b'{"id": "gid://shopify/Order/1", "na'
            return
        yield from whole(self, url, skip=skip)

    monkeypatch.setattr(ShopifyClient, "bulk_lines", cut_at_first_line)
    assert _backfill(connector, resources=["orders"]) == [("orders", "failed", 0)]
    _every_order_arrives_whole(connector, store)


def test_a_failed_bulk_operation_is_reported_with_shopifys_reason_and_runs_again(
        connector: Connector, store: SimulatedStore) -> None:
    connector.shopify.bulk_faults.append("fail")
    results = run_backfill(connector.engine, _client(connector), SHOP, resources=["customers"], poll_seconds=0.02)
    assert results[0].status == "failed" and "ended FAILED (INTERNAL_SERVER_ERROR)" in (results[0].error or "")
    assert _backfill(connector, resources=["customers"]) == [("customers", "staged", len(store.customers))]


def test_a_revoked_token_pauses_the_shop_with_the_reason(connector: Connector, store: SimulatedStore) -> None:
    with pytest.raises(BackfillError, match="refused the access token"):
        run_backfill(connector.engine, _client(connector, token="revoked"), SHOP, poll_seconds=0.02)
    [row] = connector.rows("SELECT status, paused_reason FROM shops")
    assert row.status == "paused" and "access token" in row.paused_reason


def test_the_backfill_command_reports_each_resource_and_resumes_after_a_failure(
        connector: Connector, store: SimulatedStore, tmp_path: Path) -> None:
    env = {"DATABASE_URL": connector.settings.database_url, "SHOPIFY_SHOP": SHOP, "SHOPIFY_ACCESS_TOKEN": ADMIN_TOKEN,
           "SHOPIFY_ADMIN_URL": connector.shopify_server.url, "SHOPIFY_API_SECRET": SECRET,
           "BREVO_API_KEY": BREVO_KEY}
    connector.shopify.bulk_faults.append("fail")
    first = _connector("backfill", "--shop", SHOP, "--resources", "customers,products", env=env, cwd=tmp_path)
    assert first.returncode == 1
    assert "customers: failed, 0 objects (0 lines read): Shopify's bulk operation" in first.stdout
    assert "ended FAILED (INTERNAL_SERVER_ERROR)" in first.stdout
    assert f"products: staged, {len(store.products)} objects" in first.stdout
    assert first.stderr.strip() == "error: the backfill is not complete; run it again to resume"
    second = _connector("backfill", "--shop", SHOP, "--resources", "customers", env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"customers: staged, {len(store.customers)} objects" in second.stdout
    assert "staged as history: the workers apply it" in second.stdout
    unknown = _connector("backfill", "--shop", SHOP, "--resources", "carts", env=env, cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown resource 'carts'" in unknown.stderr


def test_without_read_all_orders_the_backfill_says_only_60_days_of_orders_were_visible(
        connector: Connector, store: SimulatedStore) -> None:
    connector.shopify.scopes.discard("read_all_orders")
    [orders] = run_backfill(connector.engine, _client(connector), SHOP, resources=["orders"], poll_seconds=0.02)
    since = datetime.now(UTC) - timedelta(days=60)
    recent = [o for o in store.orders if datetime.fromisoformat(o["created_at"].replace("Z", "+00:00")) >= since]
    assert 0 < len(recent) < len(store.orders)
    assert (orders.status, orders.objects) == ("staged", len(recent))
    assert orders.notice and "60 days" in orders.notice and "read_all_orders" in orders.notice

    connector.shopify.scopes.add("read_all_orders")  # the merchant granted it
    [orders] = run_backfill(connector.engine, _client(connector), SHOP, resources=["orders"], poll_seconds=0.02,
                            restart=True)
    assert (orders.objects, orders.notice) == (len(store.orders), None)


def test_history_learnt_over_several_turns_moves_segments_without_announcing_it(connector: Connector) -> None:
    day = 24 * 60
    # Turn 1: twenty buyers, one order each; buyers 0 and 1 the smallest and oldest.
    _as_history(connector, [order(8600 + i, customer_id=600 + i, email=f"s{i}@example.com", total=f"{10 + 5 * i}.00",
                                  created=-day * (60 - 2 * i), updated=-day * (60 - 2 * i)) for i in range(20)])
    connector.sync()
    before = {r.contact_key: r.rfm_segment for r in connector.rows("SELECT contact_key, rfm_segment FROM contacts")}
    # Turn 2: both turn out to be the shop's best buyers; buyer 0's orders are history, buyer 1's are webhooks.
    later = [(n, -day * (20 - n)) for n in range(6)]
    _as_history(connector, [order(8700 + n, customer_id=600, email="s0@example.com", total="400.00", created=at,
                                  updated=at) for n, at in later])
    for n, at in later:
        connector.post("orders/create", order(8800 + n, customer_id=601, email="s1@example.com", total="400.00",
                                              created=at, updated=at))
    connector.sync()
    after = {r.contact_key: r.rfm_segment for r in connector.rows("SELECT contact_key, rfm_segment FROM contacts")}
    assert after["c:600"] != before["c:600"] and after["c:601"] != before["c:601"]
    announced = {(r.event_name, r.contact_key) for r in connector.rows(
        "SELECT event_name, contact_key FROM outbox WHERE event_name IN ('segment_changed', 'vip_entered')")}
    assert ("segment_changed", "c:601") in announced  # news
    assert not [key for _, key in announced if key == "c:600"]  # history catching up


def test_backfilled_buyers_are_built_once_with_all_their_history_and_imported_together(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sync.worker.SHOP_TIME_SLICE", 0.001)  # one batch of deliveries per turn,
    monkeypatch.setattr("sync.worker.INBOX_BATCH", 25)  # a small one: the history takes many turns
    monkeypatch.setattr("sync.worker.HISTORY_BATCH", 25)
    _backfill(connector)
    connector.sync()
    imports = [c for c in connector.brevo.calls if c.path == "/v3/contacts/import"]
    singles = [c for c in connector.brevo.calls if c.path.startswith("/v3/contacts") and c.method in ("POST", "PUT")
               and c.path not in ("/v3/contacts/import", "/v3/contacts/lists", "/v3/contacts/folders")
               and not c.path.startswith("/v3/contacts/attributes")]
    # One import per blacklist combination (Brevo's import flags apply to all its rows): here the buyers who are
    # subscribed or never asked, and those who opted out of email.
    assert (len(imports), len(singles)) == (2, 0)
    for email, totals in store.expected().buyers.items():  # and nothing was lost by waiting
        assert connector.contact(email)["attributes"]["ORDER_COUNT"] >= 1 or totals.order_count == 0, email


def test_once_the_history_is_applied_each_buyer_is_built_once_and_already_carries_the_shops_rfm_score(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[str] = []
    load = profiles.load_buyers

    def counting(session: Any, shop: Any, contacts: Any) -> Any:
        built.extend(c.contact_key for c in contacts)
        return load(session, shop, contacts)

    monkeypatch.setattr(profiles, "load_buyers", counting)
    _backfill(connector)
    connector.sync()
    keys = [k for (k,) in connector.rows("SELECT contact_key FROM contacts WHERE merged_into IS NULL")]
    assert sorted(built) == sorted(keys)  # the RFM thresholds came before the builder, not after it
    scored = connector.rows("SELECT count(*) FROM contacts WHERE order_count > 0 AND rfm_segment IS NULL")
    assert scored == [(0,)]
    for email, totals in store.expected().buyers.items():
        if totals.order_count:
            assert connector.contact(email)["attributes"]["RFM_SEGMENT"], email


def _counting_builds(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    built: Counter[str] = Counter()
    load = profiles.load_buyers

    def counting(session: Any, shop: Any, contacts: Any) -> Any:
        built.update(c.contact_key for c in contacts)
        return load(session, shop, contacts)

    monkeypatch.setattr(profiles, "load_buyers", counting)
    return built


def test_a_worker_running_beside_a_backfill_applies_each_file_staged_whole_and_builds_each_buyer_once_it_stopped(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfill, "STAGE_CHUNK", 10)  # the files are staged in many chunks
    monkeypatch.setattr(backfill, "HEARTBEAT_SECONDS", 0.0)
    monkeypatch.setattr("sync.worker.BACKFILL_HOLD", 0.0)  # the worker looks after every chunk
    built = _counting_builds(monkeypatch)
    worker = connector.worker()
    seen: list[tuple[str, int, int, int]] = []  # while staging: the file, customers and orders applied, buyers built

    def alongside(progress: Any) -> None:  # as `connector run` does beside `connector backfill`
        if progress.step == "staging":
            worker.run_once()
            seen.append((progress.resource, _count(connector, "customers"), _count(connector, "orders"), len(built)))

    results = {resource: (status, objects) for resource, status, objects in _backfill(connector, progress=alongside)}
    assert len(seen) > 10
    # What it reports counts every object of each file, those the worker applied meanwhile too.
    assert results["customers"] == ("staged", len(store.customers))
    assert results["orders"] == ("staged", len(store.orders))
    # The customers were applied while the orders' file was staged, the orders not before it was whole.
    assert {customers for resource, customers, _, _ in seen if resource == "orders"} >= {len(store.customers)}
    assert all(orders == 0 for resource, _, orders, _ in seen if resource != "checkouts")
    assert {n for *_, n in seen} == {0}  # and no buyer was built while the backfill ran
    connector.sync()
    keys = [k for (k,) in connector.rows("SELECT contact_key FROM contacts WHERE merged_into IS NULL")]
    assert sorted(built) == sorted(keys) and set(built.values()) == {1}
    for email, totals in store.expected().buyers.items():
        if totals.order_count:
            assert connector.contact(email)["attributes"]["ORDER_COUNT"] >= 1, email


def test_a_shop_waiting_only_for_a_running_backfill_rests_a_moment_instead_of_being_leased_in_a_loop(
        connector: Connector, store: SimulatedStore) -> None:
    _backfill(connector, resources=["customers", "orders"])
    now = datetime.now(UTC)
    # The backfill said it stopped: nothing holds its history.
    assert connector.rows("SELECT queued_at FROM backfills") == [(None,), (None,)]
    with connector.engine.begin() as conn:  # as a backfill still reading the orders' file leaves it
        conn.execute(sa.text("UPDATE backfills SET queued_at = :at"), {"at": now})
        conn.execute(sa.text("UPDATE backfills SET status = 'staging' WHERE resource = 'orders'"))
    worker = connector.worker()
    assert worker.run_once() == 1  # the customers' file, staged whole, is applied; the orders wait for theirs
    assert worker.run_once() == 0  # and the shop rests before it is looked at again
    [shop] = connector.rows("SELECT lease_owner, lease_expires_at FROM shops")
    assert shop.lease_owner is None and shop.lease_expires_at is not None
    assert (_count(connector, "customers"), _count(connector, "orders")) == (len(store.customers), 0)
    assert connector.rows("SELECT count(*) FROM contacts WHERE dirty") == [(len(store.customers),)]  # none built


def test_a_backfill_killed_while_staging_holds_the_building_of_its_buyers_for_a_minute_at_most(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _backfill(connector, resources=["customers"])
    with connector.engine.begin() as conn:  # killed: it could not say it stopped
        conn.execute(sa.text("UPDATE backfills SET queued_at = :at"),
                     {"at": datetime.now(UTC) - timedelta(seconds=61)})
    built = _counting_builds(monkeypatch)
    connector.sync()
    assert len(built) == len(store.customers)
    assert connector.rows("SELECT count(*) FROM contacts WHERE dirty") == [(0,)]


def test_a_backfill_waiting_minutes_for_a_free_bulk_query_slot_still_holds_its_history(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backfill, "HEARTBEAT_SECONDS", 0.0)
    client = _client(connector)
    connector.shopify.bulk_seconds = 3600.0
    # another app's bulk queries hold every slot the shop has, for three minutes on the clock
    held = [client.run_bulk_query(RESOURCES["products"].bulk_query(None)) for _ in range(5)]
    connector.shopify.bulk_seconds = 0.05
    clock = FixedClock(began := datetime.now(UTC))
    silent: list[timedelta] = []

    def sleep(seconds: float) -> None:  # each wait of Shopify's `retry_after` (5 s) passes at once on the clock
        clock.advance(seconds=seconds)
        if clock.now() - began > 3 * backfill.SILENCE:
            for operation in held:
                connector.shopify.operations[operation].failed = True  # the other app's queries end
        with connector.engine.connect() as conn:
            beats = conn.execute(sa.select(col(Backfill.queued_at))).scalars().all()
        silent.append(clock.now() - min(as_utc(at) for at in beats))

    results = run_backfill(connector.engine, client, SHOP, clock=clock, poll_seconds=0.02, sleep=sleep)
    assert [r.status for r in results] == ["staged"] * 4
    assert clock.now() - began > 2 * backfill.SILENCE  # it waited minutes for a slot
    assert max(silent) < backfill.SILENCE  # and never looked killed to a worker


def test_the_heartbeat_passes_over_a_file_a_worker_holds_instead_of_waiting_for_it(
        connector: Connector, store: SimulatedStore) -> None:
    _backfill(connector, resources=["customers", "orders"])
    ids = sorted(id_ for (id_,) in connector.rows("SELECT id FROM backfills"))
    beat_at = datetime.now(UTC) + timedelta(hours=1)
    beating = threading.Thread(target=backfill._beat, args=(connector.engine, ids, FixedClock(beat_at)))
    with connector.engine.connect() as worker:  # a worker's transaction applying the customers' file
        worker.execute(sa.update(Backfill).where(col(Backfill.id) == ids[0]).values(queued=0))
        beating.start()
        # PostgreSQL locks rows: the beat passes over the one the worker holds. SQLite has one writer at a time:
        # the beat waits for the worker's transaction, as every writer does there.
        sqlite = connector.engine.dialect.name == "sqlite"
        beating.join(timeout=1 if sqlite else 10)
        assert beating.is_alive() == sqlite
        worker.rollback()
    beating.join(timeout=10)
    assert not beating.is_alive()
    with Session(connector.engine) as session:
        still_read = session.get_one(Backfill, ids[1])
    assert still_read.queued_at is not None and as_utc(still_read.queued_at) == beat_at  # says the backfill runs


def test_a_heartbeat_the_database_refuses_is_logged_and_the_backfill_goes_on(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(backfill, "HEARTBEAT_SECONDS", 0.0)
    beat = backfill._beat
    calls = 0

    def refused(*args: Any) -> None:  # the first beat passes, the others are refused (as in a deadlock)
        nonlocal calls
        calls += 1
        if calls > 1:
            raise sa.exc.OperationalError("UPDATE backfills", {}, Exception("deadlock detected"))
        beat(*args)

    monkeypatch.setattr(backfill, "_beat", refused)
    with caplog.at_level(logging.WARNING, logger="connector.backfill"):
        results = _backfill(connector)
    assert calls > 2 and [status for _, status, _ in results] == ["staged"] * 4
    assert "could not record that the backfill still runs" in caplog.text
    connector.sync()
    _every_buyer_has_their_totals(connector, store)


def test_the_planners_statistics_are_refreshed_as_a_backfill_fills_the_tables(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    # PostgreSQL would otherwise plan a shop's first hour from statistics of its empty tables, or never refresh
    # them where autovacuum is off: whole tables read for each chunk of staged lines, each batch of buyers.
    seen: list[str] = []
    beside: list[bool] = []  # whether each of the worker's refreshes ran beside its work

    def refresh(session: Any, *tables: sa.Table) -> None:
        seen.append("refreshed " + " ".join(t.name for t in tables))
        beside.append(threading.current_thread().name.startswith("statistics"))

    def step(progress: backfill.Progress) -> None:
        if progress.step in ("staging", "staged") and (not seen or seen[-1] != progress.step):
            seen.append(progress.step)

    monkeypatch.setattr(backfill, "refresh_statistics", refresh)
    monkeypatch.setattr(worker_module, "refresh_statistics", refresh)
    monkeypatch.setattr(worker_module, "STATISTICS_FIRST", 10)
    monkeypatch.setattr(worker_module, "BUILT_STATISTICS_FIRST", 3)
    run_backfill(connector.engine, _client(connector), SHOP, poll_seconds=0.02, progress=step)
    assert seen == ["staging", "refreshed backfill_rows", "staged"]  # the staged files, before they are applied
    worker = connector.sync()
    by_applier = [s for s in seen[3:] if "orders" in s.split()]
    assert by_applier and {"inbox", "orders", "order_lines", "contacts", "outbox"} <= set(by_applier[-1].split())
    # after 10 deliveries, then at each doubling: a few times for the whole history, not once per batch
    assert len(by_applier) <= worker.stats.applied.bit_length()
    assert worker.statistics_due > worker.stats.applied
    # the builder's tables (the loyalty ledgers grow from nothing as buyers are built), likewise by buyers built
    by_builder = [s for s in seen[3:] if s == "refreshed contacts loyalty_entries outbox"]
    assert by_builder and len(by_builder) <= worker.stats.built.bit_length()
    assert worker.built_statistics_due > worker.stats.built
    # on PostgreSQL the worker waits for the first refresh of each group of tables only, the applier's and the
    # builder's (on SQLite a refresh does nothing: it is not moved aside)
    if connector.engine.dialect.name == "postgresql":
        assert beside[1:].count(False) == 2 and beside.count(True) == len(beside) - 3
    else:
        assert not any(beside)


@pytest.mark.parametrize("offset", [0, 10], ids=["read by the worker", "read ahead by the helper process"])
def test_a_staged_object_no_handler_can_read_is_set_aside_with_a_dead_letter_and_the_rest_is_applied(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch, offset: int) -> None:
    taken = _reading_ahead(monkeypatch)  # chunks of 7: the first is read by the worker, the next ones ahead
    _backfill(connector, resources=["customers"])
    with connector.engine.begin() as conn:  # one customer's id is not Shopify's
        [(line, body)] = conn.execute(sa.text(
            "SELECT line, body FROM backfill_rows WHERE line > 0 ORDER BY line LIMIT 1 OFFSET :n"), {"n": offset}).all()
        broken = body.replace('"gid://shopify/Customer/', '"gid://shopify/Customer/x')
        conn.execute(sa.text("UPDATE backfill_rows SET body = :body WHERE line = :line"),
                     {"body": broken, "line": line})
    connector.sync()
    assert _count(connector, "customers") == len(store.customers) - 1
    [letter] = connector.rows("SELECT source, reference, topic, reason FROM dead_letters")
    assert (letter.source, letter.topic) == ("inbox", "customers/update") and "unreadable" in letter.reason
    [entry] = connector.rows("SELECT id, source, status, body FROM inbox")
    assert (entry.source, entry.status) == ("backfill", "failed") and letter.reference.startswith(f"inbox:{entry.id}:")
    assert "gid://shopify/Customer/x" in entry.body  # kept whole, for `dead-letters retry` once it is fixed
    assert connector.rows("SELECT status, queued FROM backfills") == [("done", len(store.customers))]
    assert taken[1] is True  # the second chunk (lines 8 to 14) was read by the helper


def _reading_ahead(monkeypatch: pytest.MonkeyPatch, after_read: Any = None) -> list[bool]:
    """Small chunks, so the helper process reads ahead; returns, chunk after chunk, whether the worker took what
    the helper read. `after_read(reader, session)` runs after each chunk is handed to the helper."""
    monkeypatch.setattr("sync.worker.HISTORY_BATCH", 7)
    taken: list[bool] = []
    sessions: list[Any] = []  # the worker's unit of work taking each chunk
    take, read, take_history = backfill.HistoryReader.take, backfill.HistoryReader.read, backfill.take_history

    def taking(self: backfill.HistoryReader, run: Backfill) -> Any:
        ahead = take(self, run)
        taken.append(ahead is not None)
        return ahead

    def reading(self: backfill.HistoryReader, *args: Any, **kwargs: Any) -> None:
        read(self, *args, **kwargs)
        if after_read is not None:
            after_read(self, sessions[-1])

    def taking_history(session: Any, *args: Any, **kwargs: Any) -> Any:
        sessions.append(session)
        return take_history(session, *args, **kwargs)

    monkeypatch.setattr(backfill.HistoryReader, "take", taking)
    monkeypatch.setattr(backfill.HistoryReader, "read", reading)
    monkeypatch.setattr(backfill, "take_history", taking_history)
    return taken


def test_history_a_helper_process_reads_ahead_lands_as_history_the_worker_reads_itself(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _reading_ahead(monkeypatch)
    _backfill(connector)
    connector.sync()
    assert taken.count(True) > 10  # most chunks were read by the helper
    _every_buyer_has_their_totals(connector, store)
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders)
    assert _count(connector, "customers") == len(store.customers)
    assert _count(connector, "backfill_rows") == 0
    assert [row.status for row in connector.rows("SELECT status FROM backfills")] == ["done"] * 4


def test_the_helper_reads_two_chunks_ahead_each_starting_where_the_one_before_ends(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    ahead: list[int] = []  # after each hand-over: how many chunks the helper holds for the shop

    def counting(reader: backfill.HistoryReader, session: Any) -> None:
        ahead.extend(len(queue) for queue in reader._ahead.values())

    taken = _reading_ahead(monkeypatch, counting)
    _backfill(connector, resources=["customers", "orders"])
    connector.sync()
    assert ahead and set(ahead) == {backfill.READ_AHEAD} == {2}
    # Per file: its first chunk is read by the worker, which then finds the end itself; every chunk between comes
    # from the helper, the second one handed over while the first was still being read.
    chunks = [-(-len(store.customers) // 7), -(-len(store.orders) // 7)]
    assert taken == [False] + [True] * (chunks[0] - 1) + [False, False] + [True] * (chunks[1] - 1) + [False]
    _every_buyer_has_their_totals(connector, store)
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders)
    assert _count(connector, "backfill_rows") == 0


def test_history_orders_the_helper_prepared_reach_brevo_as_the_worker_would_have_made_them(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _reading_ahead(monkeypatch)
    compared: list[tuple[str, str]] = []  # (the body the helper made, the one the worker makes from its record)

    def comparing(ctx: ApplyContext, rec: Any) -> str:
        made = ctx.order_bodies.get(rec.order_id)
        if made is not None:
            buyer = Buyer(contact_key="", customer_id=rec.customer_id, email=rec.email, phone=rec.phone)
            compared.append((made, jsontext.dumps(ecommerce.order_body(
                rec, buyer, ctx.shop_domain, ecommerce.order_status(rec), rec.updated_at))))
        return apply_order(ctx, rec)

    monkeypatch.setitem(TOPICS, "orders/updated", replace(TOPICS["orders/updated"], apply=comparing))
    _backfill(connector, resources=["customers", "orders"])
    connector.sync()
    assert taken.count(True) > 10 and len(compared) > 50
    assert all(made == own for made, own in compared)
    # Sent as they were stored: Brevo holds each order once, in the body made ahead.
    made = {jsontext.loads(body)["id"]: jsontext.loads(body) for body, _ in compared}
    sent = {o["id"]: {k: v for k, v in o.items() if k not in ("historical", "batchId")} for o in connector.brevo.orders}
    assert sorted(int(i) for i in sent) == sorted(
        o["id"] for o in store.orders if not o["test"] and (o.get("email") or o.get("phone") or o.get("customer")))
    assert all(sent[i] == body for i, body in made.items())


def test_without_read_ahead_the_worker_reads_every_chunk_itself(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    taken = _reading_ahead(monkeypatch)
    connector.settings = connector.settings.model_copy(update={"read_ahead": False})
    _backfill(connector)
    connector.sync()
    assert taken == []
    _every_buyer_has_their_totals(connector, store)


@pytest.mark.parametrize("idle", [False, True], ids=["while reading", "once done reading"])
def test_a_helper_process_that_dies_is_given_up_and_the_worker_reads_the_rest_itself(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture, idle: bool) -> None:
    def kill_the_second(reader: backfill.HistoryReader, session: Any) -> None:
        if reader._helper._pool is not None and len(taken) == 2:
            if idle:
                [queue] = reader._ahead.values()
                for ahead in queue:
                    ahead.future.result()
            for process in list(reader._helper._pool._processes.values()):  # as the kernel's OOM killer would
                process.kill()
                process.join()

    taken = _reading_ahead(monkeypatch, kill_the_second)
    _backfill(connector, resources=["customers", "orders"])
    connector.sync()
    assert "the helper process reading staged history failed" in caplog.text
    # Killed after the second chunk was handed to it (reading it, or done): given up once it is found dead.
    assert taken[:2] == [False, True] and True not in taken[4:]
    _every_buyer_has_their_totals(connector, store)
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders)


def test_lines_gone_after_the_helper_read_them_are_not_taken_from_its_reading(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    gone: list[int] = []
    # Staged in chunks of a few lines: the nested lines that come after their chunk's end are staged apart.
    monkeypatch.setattr(backfill, "STAGE_CHUNK", 10)

    def drop_a_line_once(reader: backfill.HistoryReader, session: Any) -> None:
        if not gone and reader.reading:  # one nested line of the chunk the helper read vanishes before it is taken
            [queue] = reader._ahead.values()
            read = reader._helper.result(queue[0].future)  # as the worker reads it (the helper sends it pickled)
            for parent in read.parent_ids if read is not None and read.children else ():
                gone.extend(session.execute(sa.text("DELETE FROM backfill_rows WHERE parent = :p RETURNING line"),
                                            {"p": parent}).scalars())
                if gone:
                    break

    _reading_ahead(monkeypatch, drop_a_line_once)
    _backfill(connector, resources=["orders"])
    connector.sync()
    assert gone
    # The chunk is read again from what is staged: every order lands, with the lines still there.
    assert _count(connector, "orders") == len(store.orders)
    assert _count(connector, "order_lines") == sum(len(o["line_items"]) for o in store.orders) - len(gone)
    assert _count(connector, "dead_letters") == 0 and _count(connector, "backfill_rows") == 0


def _building_with_a_helper(monkeypatch: pytest.MonkeyPatch, after_submit: Any = None) -> list[bool]:
    """Batches of buyers small enough to be shared with the helper process; returns, batch after batch, whether
    the worker used the helper's part. `after_submit(helper)` runs after each part is handed to it."""
    monkeypatch.setattr("sync.worker.BUILD_BATCH", 10)
    monkeypatch.setattr("sync.profiles.SPLIT_AT", 4)
    used: list[bool] = []
    submit, result = Helper.submit, Helper.result

    def submitting(self: Helper, *args: Any) -> Any:
        future = submit(self, *args)
        if after_submit is not None:
            after_submit(self)
        return future

    def taking(self: Helper, future: Any) -> Any:
        views = result(self, future)
        used.append(views is not None)
        return views

    monkeypatch.setattr(Helper, "submit", submitting)
    monkeypatch.setattr(Helper, "result", taking)
    return used


BUILT = ("SELECT contact_key, pending_hash, sent_hash, order_count, total_spent, last_order_at, days_between_orders, "
         "rfm_score, rfm_segment, loyalty_tier, lifecycle_due_at, push_state FROM contacts ORDER BY contact_key")


def test_buyers_built_partly_in_a_helper_process_are_those_the_worker_builds_alone(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    used = _building_with_a_helper(monkeypatch)
    settled: dict[str, list[Any]] = {}
    settle = worker_module.Worker._settle_history_figures

    def settling(worker: Any, lease: Any, shop: Any, now: datetime) -> bool:
        done = settle(worker, lease, shop, now)  # the RFM figures of history's buyers, partly by the helper
        figures = ("order_count", "total_spent", "last_order_at", "days_between_orders")
        with connector.engine.begin() as conn:
            stored = [(key, *values[:2], as_utc(values[2]), values[3]) for key, *values in conn.execute(sa.select(
                col(Contact.contact_key), *(getattr(Contact, f) for f in figures)).where(
                col(Contact.dirty).is_(True), col(Contact.history).is_(True), col(Contact.merged_into).is_(None))
                .order_by(col(Contact.contact_key)))]
        with Session(connector.engine) as session:  # the same, worked out here for all of them
            settled["here"] = [tuple(row[f] for f in ("contact_key", *figures)) for row in profiles.history_figures(
                session, profiles.ShopContext.of(shop, now), [key for key, *_ in stored])]
        settled["stored"] = stored
        return done

    monkeypatch.setattr(worker_module.Worker, "_settle_history_figures", settling)
    clock = FixedClock(datetime.now(UTC))  # RFM recency moves with time: that would be a change of its own
    connector.policy = replace(connector.policy, import_settle_seconds=0.0)  # imports count at once, time still
    _backfill(connector, clock=clock)
    connector.sync(clock=clock)
    assert used and all(used)  # every batch of buyers (and of history's RFM figures) was shared with the helper
    assert len(settled["stored"]) > 30 and settled["stored"] == settled["here"]
    _every_buyer_has_their_totals(connector, store)
    assert connector.contact(store.customers[0]["email"])["attributes"]["LOYALTY_POINTS"] is not None
    _built_alone_the_same(connector, clock)  # the same figures, and the same bodies (nothing new to send)


def test_the_helper_is_handed_its_part_of_the_next_batch_of_buyers_with_the_current_one(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    used = _building_with_a_helper(monkeypatch)
    monkeypatch.setattr(worker_module, "settle_history_figures",
                        lambda *args, **kwargs: profiles.settle_history_figures(*args, **kwargs, limit=10))
    batches: dict[str, list[set[str]]] = {"views": [], "figures": []}
    handed: dict[str, list[tuple[int, set[str]]]] = {"views": [], "figures": []}  # batches begun then, its keys
    views, figures, submit = profiles._views, profiles.history_figures, Helper.submit

    def viewing(session: Any, shop: Any, contacts: Any, *args: Any) -> Any:
        batches["views"].append({c.contact_key for c in contacts})
        return views(session, shop, contacts, *args)

    def figuring(session: Any, shop: Any, keys: Any) -> Any:  # the worker's own part of a batch of figures
        batches["figures"].append(set(keys))
        return figures(session, shop, keys)

    def submitting(self: Helper, fn: Any, shop: Any, contacts: Any, *args: Any) -> Any:
        work = "views" if fn is profiles.helper_views else "figures"
        keys = {c.contact_key for c in contacts} if work == "views" else set(contacts)
        handed[work].append((len(batches[work]), keys))
        return submit(self, fn, shop, contacts, *args)

    monkeypatch.setattr(profiles, "_views", viewing)
    monkeypatch.setattr(profiles, "history_figures", figuring)
    monkeypatch.setattr(Helper, "submit", submitting)
    _backfill(connector)
    connector.sync()
    assert len(batches["views"]) >= 3 and all(used)
    # Once the first batch has begun, each part is handed over while the worker is at the batch before its own,
    # and each is used: the worker built none of those buyers itself.
    assert [begun for begun, _ in handed["views"]] == [1] + list(range(1, len(batches["views"])))
    for (_, keys), batch in zip(handed["views"][1:], batches["views"][1:], strict=False):
        assert keys and keys <= batch
    # The same for history's RFM figures: the next batch's part is handed over before the worker does its own.
    assert [begun for begun, _ in handed["figures"]][:3] == [0, 0, 1]
    theirs = set().union(*(keys for _, keys in handed["figures"]))
    assert theirs and not theirs & set().union(*batches["figures"])
    _every_buyer_has_their_totals(connector, store)


def _built_alone_the_same(connector: Connector, clock: FixedClock) -> None:
    """Every buyer built again by the worker alone comes out the same: the same figures, nothing new to send."""
    built = connector.rows(BUILT)
    with connector.engine.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET dirty = :t WHERE merged_into IS NULL"), {"t": True})
    connector.settings = connector.settings.model_copy(update={"read_ahead": False})
    calls = len(connector.brevo.calls)
    connector.sync(clock=clock)
    assert connector.rows(BUILT) == built
    assert [c.path for c in connector.brevo.calls[calls:] if c.path.startswith("/v3/contacts")] == []


@dataclass
class _Handed:
    """Parts of batches of buyers handed to the helper: those of a next batch (handed ahead), those of the batch
    the worker is at, and the futures whose views the worker asked the helper for."""

    ahead: list[Any] = field(default_factory=list)
    now: list[Any] = field(default_factory=list)
    asked: set[Any] = field(default_factory=set)


def _handed_ahead(monkeypatch: pytest.MonkeyPatch, change: Any) -> _Handed:
    """Parts of the next batch handed to the helper go through `change(contacts, owners)` first."""
    handed = _Handed()
    hand_over, result = profiles._hand_over, Helper.result

    def handing_over(helper: Helper, shop: Any, contacts: Any, owners: Any) -> Any:
        if contacts and isinstance(contacts[0], profiles._Contact):  # the next batch's part (`upcoming`)
            part = hand_over(helper, shop, *change(contacts, owners))
            handed.ahead.append(part)
        else:
            part = hand_over(helper, shop, contacts, owners)
            handed.now.append(part)
        return part

    def taking(self: Helper, future: Any) -> Any:
        handed.asked.add(future)
        return result(self, future)

    monkeypatch.setattr(profiles, "_hand_over", handing_over)
    monkeypatch.setattr(Helper, "result", taking)
    return handed


def test_a_part_of_the_next_batch_whose_phone_owners_moved_is_worked_out_again(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _building_with_a_helper(monkeypatch)

    def moving_owners(contacts: Any, owners: dict[str, str]) -> Any:
        # As if settling the batch before gave these numbers to another buyer than the one holding them now.
        return contacts, {phone: "c:0" for phone in owners}

    handed = _handed_ahead(monkeypatch, moving_owners)
    clock = FixedClock(datetime.now(UTC))
    connector.policy = replace(connector.policy, import_settle_seconds=0.0)
    _backfill(connector, clock=clock)
    connector.sync(clock=clock)
    moved = [part.future for part in handed.ahead if part.owners]
    # None of the parts given wrong owners was used: the batch's part was handed over again, and that one used.
    assert moved and not set(moved) & handed.asked
    assert len(handed.now) > len(moved) and {part.future for part in handed.now} <= handed.asked
    _every_buyer_has_their_totals(connector, store)
    _built_alone_the_same(connector, clock)


def test_a_part_handed_ahead_for_buyers_the_next_batch_does_not_hold_is_left_and_the_worker_builds_them(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _building_with_a_helper(monkeypatch)

    def elsewhere(contacts: Any, owners: dict[str, str]) -> Any:  # keys no batch holds
        return [replace(c, contact_key=f"{c.contact_key}:elsewhere") for c in contacts], owners

    handed = _handed_ahead(monkeypatch, elsewhere)
    built: set[str] = set()  # buyers the worker built itself
    load_buyers = profiles.load_buyers

    def loading(session: Any, shop: Any, contacts: Any, **kwargs: Any) -> Any:
        built.update(c.contact_key for c in contacts)
        return load_buyers(session, shop, contacts, **kwargs)

    monkeypatch.setattr(profiles, "load_buyers", loading)
    clock = FixedClock(datetime.now(UTC))
    connector.policy = replace(connector.policy, import_settle_seconds=0.0)
    _backfill(connector, clock=clock)
    connector.sync(clock=clock)
    assert len(handed.ahead) >= 2 and not {part.future for part in handed.ahead} & handed.asked
    for part in handed.ahead:  # the buyers it stood for were built by the worker
        assert {key.removesuffix(":elsewhere") for key in part.keys} <= built
    _every_buyer_has_their_totals(connector, store)
    _built_alone_the_same(connector, clock)


def test_a_helper_process_that_dies_while_building_is_given_up_and_the_worker_builds_every_buyer(
        connector: Connector, store: SimulatedStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    def kill(helper: Helper) -> None:
        pool = helper._pool
        if pool is not None and len(used) == 1:  # as the kernel's OOM killer would, once a part was taken
            for process in list(pool._processes.values()):
                process.kill()
                process.join()
            deadline = time.monotonic() + 30
            while not pool._broken and time.monotonic() < deadline:  # what is handed over next is refused
                time.sleep(0.01)

    used = _building_with_a_helper(monkeypatch, kill)
    _backfill(connector)
    with caplog.at_level(logging.WARNING):
        connector.sync()
    assert "the helper process building buyers failed" in caplog.text
    # The part it had done before it died may still be taken; none after.
    assert used[0] and False in used and True not in used[used.index(False):]
    _every_buyer_has_their_totals(connector, store)
