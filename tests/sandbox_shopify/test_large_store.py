"""The large simulated store of the backfill benchmark: objects rebuilt from their index, bulk files written once
when it is built, and those files served by the simulated Admin API."""

from __future__ import annotations

import io
import time
import tracemalloc
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from connector.sandbox.server import serve_in_thread
from connector.sandbox.shopify import LargeStore
from connector.sandbox.shopify_admin import ShopifyAdminSandbox
from connector.sandbox.shopify_bulk import BulkFile, Consents, write
from connector.shopify import ShopifyClient
from mappings.shopify import CheckoutRecord, CustomerRecord, OrderRecord, ProductRecord
from mappings.shopify_graphql import RESOURCES, to_payload

JSON = dict[str, Any]
SHOP = "large-store.myshopify.com"
START = datetime(2024, 11, 1, tzinfo=UTC)
CUSTOMERS = 300
ROOTS = ("customers", "products", "orders", "abandonedCheckouts")
RESOURCE_OF = {"customers": "customers", "products": "products", "orders": "orders", "abandonedCheckouts": "checkouts"}


@pytest.fixture(scope="module")
def store() -> Iterator[LargeStore]:
    built = LargeStore(SHOP, customers=CUSTOMERS, products=40, start=START)
    yield built
    built.close()


def _prepared(store: LargeStore, root: str) -> BulkFile:
    prepared = store.bulk_file(root, None, True)
    assert prepared is not None
    return prepared


def _file(store: LargeStore, root: str) -> bytes:
    return Path(_prepared(store, root).path).read_bytes()


def _lines(store: LargeStore, root: str) -> list[JSON]:
    return [orjson.loads(line) for line in _file(store, root).splitlines()]


def _objects(store: LargeStore, root: str) -> list[tuple[JSON, list[JSON]]]:
    """Each object of a bulk file with its nested rows, reassembled as the connector does (by `__parentId`)."""
    lines = _lines(store, root)
    children: defaultdict[str, list[JSON]] = defaultdict(list)
    for line in lines:
        if "__parentId" in line:
            children[line["__parentId"]].append(line)
    return [(line, children[line["id"]]) for line in lines if "__parentId" not in line]


def test_the_same_arguments_give_the_same_bulk_files_byte_for_byte(store: LargeStore) -> None:
    again = LargeStore(SHOP, customers=CUSTOMERS, products=40, start=START)
    other = LargeStore(SHOP, customers=CUSTOMERS, products=40, start=START, seed=8)
    try:
        for root in ROOTS:
            assert _file(again, root) == _file(store, root), root
            assert _file(other, root) != _file(store, root), root
    finally:
        again.close()
        other.close()


def test_the_files_are_what_the_admin_api_renders_from_the_lazy_objects_on_any_pass(store: LargeStore) -> None:
    resources: dict[str, Iterable[JSON]] = {"customers": store.customers, "products": store.products,
                                            "orders": store.orders, "abandonedCheckouts": store.checkouts}
    for root, objects in resources.items():
        for _ in range(2):  # a second pass rebuilds the same objects
            rendered = io.BytesIO()
            write(root, objects, None, Consents(), rendered)
            assert rendered.getvalue() == _file(store, root), root
    assert list(store.deliveries()) == []


def test_every_nested_row_points_at_a_parent_written_before_it_and_the_counts_add_up(store: LargeStore) -> None:
    for root in ROOTS:
        lines, seen, apart = _lines(store, root), set(), 0
        for number, line in enumerate(lines):
            if "__parentId" not in line:
                seen.add(line["id"])
                continue
            assert line["__parentId"] in seen, (root, number)
            before = lines[number - 1]
            apart += "__parentId" not in before and before["id"] != line["__parentId"]
        assert _prepared(store, root)[1:] == (len(lines), len(seen))  # objectCount, rootObjectCount
        assert apart or root == "customers", root  # children come one parent late, as in Shopify's files
    assert len(store.customers) == CUSTOMERS and len(store.products) == 40
    assert _prepared(store, "orders").roots == len(store.orders)
    assert _prepared(store, "abandonedCheckouts").roots == len(store.checkouts)
    assert store.bulk_file("orders", "updated_at:>'2024-01-01'", True) is None  # a search is rendered when asked
    assert store.bulk_file("orders", None, False) is None  # so is a query without the nested rows
    assert _prepared(store, "customers") == store.bulk_file("customers", None, False)  # which customers have none of


def test_the_store_looks_like_a_real_one_to_the_connector(store: LargeStore) -> None:
    customers = [CustomerRecord.from_payload(to_payload("customers", node)) for node, _ in _objects(store, "customers")]
    orders = [OrderRecord.from_payload(to_payload("orders", node, rows)) for node, rows in _objects(store, "orders")]
    checkouts = [CheckoutRecord.from_payload(to_payload("checkouts", node, rows))
                 for node, rows in _objects(store, "abandonedCheckouts")]
    products = [ProductRecord.from_payload(to_payload("products", node, rows))
                for node, rows in _objects(store, "products")]
    assert len(customers) == CUSTOMERS and len(products) == 40

    # Every customer has an email of their own; most a phone, and no two the same number.
    assert len({c.email for c in customers}) == CUSTOMERS and all(c.email for c in customers)
    phones = [c.phone for c in customers if c.phone]
    assert len(phones) > CUSTOMERS * 0.7 and len(set(phones)) == len(phones)
    assert len({c.customer_id for c in customers}) == CUSTOMERS
    email_states = Counter(c.email_consent.state for c in customers if c.email_consent)
    sms_states = Counter(c.sms_consent.state for c in customers if c.sms_consent)
    assert {"subscribed", "not_subscribed", "unsubscribed"} <= set(email_states) and {
        "subscribed", "not_subscribed"} <= set(sms_states)

    # About 5 orders per customer (some none, some 10+), 1 to 3 lines each; guests order with an email only.
    known = {c.customer_id for c in customers}
    per_customer = Counter(o.customer_id for o in orders if o.customer_id)
    assert set(per_customer) <= known
    assert 4.0 * CUSTOMERS <= len(orders) <= 6.5 * CUSTOMERS
    assert len(per_customer) < CUSTOMERS and max(per_customer.values()) >= 10
    guests = [o for o in orders if o.customer_id is None]
    assert guests and all(o.email for o in guests) and not {o.email for o in guests} & {c.email for c in customers}
    assert all(1 <= len(o.lines) <= 3 for o in orders)
    assert len({o.order_id for o in orders}) == len(orders)
    assert len({line.line_id for o in orders for line in o.lines}) == sum(len(o.lines) for o in orders)
    share = {
        "refunded": sum(bool(o.refunds) for o in orders) / len(orders),
        "cancelled": sum(o.cancelled_at is not None for o in orders) / len(orders),
        "test": sum(o.test for o in orders) / len(orders),
        "foreign": sum(o.presentment_currency != "USD" for o in orders) / len(orders),
        "fulfilled": sum(o.fulfillment_status == "fulfilled" for o in orders) / len(orders),
        "discounted": sum(bool(o.discount_codes) for o in orders) / len(orders),
    }
    assert 0.05 <= share["refunded"] <= 0.15 and 0.02 <= share["cancelled"] <= 0.07, share
    assert 0 < share["test"] <= 0.03 and 0.06 <= share["foreign"] <= 0.15 and share["fulfilled"] > 0.8, share
    assert 0.1 <= share["discounted"] <= 0.3, share
    assert all(o.total > 0 and o.total_tax >= 0 for o in orders)
    oldest = min(o.created_at for o in orders if o.created_at)
    assert (START - oldest).days <= 400 and all(o.updated_at and o.updated_at < START for o in orders)

    # Abandoned checkouts for about 5% of customers, with an email and lines, never completed.
    assert 1 <= len(checkouts) <= CUSTOMERS * 0.12
    assert all(c.email and c.lines and c.completed_at is None and c.customer_id in known for c in checkouts)


def test_the_lazy_objects_are_rebuilt_in_constant_memory() -> None:
    def peak_while_reading(customers: int) -> int:
        built = LargeStore(SHOP, customers=customers, products=40, start=START, bulk_files=False)
        tracemalloc.start()
        try:
            assert sum(1 for _ in built.orders) == len(built.orders) > customers * 3
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small, large = peak_while_reading(20), peak_while_reading(160)
    assert large < small * 1.5 + 200_000, (small, large)


@pytest.fixture
def served(store: LargeStore) -> Iterator[tuple[ShopifyAdminSandbox, ShopifyClient]]:
    shopify = ShopifyAdminSandbox(tokens={"t"}, store=store, bulk_seconds=0.3)
    server = serve_in_thread(shopify.app)
    yield shopify, ShopifyClient(SHOP, "t", api_version="2026-01", admin_url=server.url, http=httpx.Client())
    server.stop()


def _download(client: ShopifyClient, operation: str) -> tuple[bytes, int]:
    status = client.wait_bulk(operation, deadline=time.monotonic() + 30, poll_seconds=0.05, sleep=time.sleep)
    assert status.status == "COMPLETED" and status.url
    return b"".join(line for _, line in client.bulk_lines(status.url)), status.objects


def test_the_admin_api_serves_a_whole_connection_from_the_prepared_file_once_the_operation_has_run(
        store: LargeStore, served: tuple[ShopifyAdminSandbox, ShopifyClient]) -> None:
    shopify, client = served
    for root in ROOTS:
        operation = client.run_bulk_query(RESOURCES[RESOURCE_OF[root]].bulk_query(None))
        assert client.bulk_operation(operation).status == "RUNNING"  # bulk_seconds have not passed yet
        prepared = _prepared(store, root)
        assert shopify.operations[operation].path == prepared.path
        assert _download(client, operation) == (_file(store, root), prepared.objects)


def test_a_search_is_rendered_from_the_lazy_objects_and_faults_still_apply(
        store: LargeStore, served: tuple[ShopifyAdminSandbox, ShopifyClient]) -> None:
    shopify, client = served
    orders = RESOURCES["orders"]
    since = datetime(2024, 9, 1, tzinfo=UTC)
    operation = client.run_bulk_query(orders.bulk_query(f"created_at:>='{since:%Y-%m-%dT%H:%M:%SZ}'"))
    recent, _ = _download(client, operation)
    assert shopify.operations[operation].path != _prepared(store, "orders").path
    roots = [orjson.loads(line) for line in recent.splitlines() if b"__parentId" not in line]
    assert 0 < len(roots) < len(store.orders)
    assert all(datetime.fromisoformat(r["createdAt"]) >= since for r in roots)

    shopify.bulk_faults.extend(["truncate", "fail"])
    operation = client.run_bulk_query(orders.bulk_query(None))
    status = client.wait_bulk(operation, deadline=time.monotonic() + 30, poll_seconds=0.05, sleep=time.sleep)
    assert status.url
    first = [line for _, line in client.bulk_lines(status.url)]
    whole = _file(store, "orders").splitlines(keepends=True)
    assert first[:-1] == whole[:-1] and first[-1] == whole[-1][: len(whole[-1]) // 2]  # cut mid-line
    assert [line for _, line in client.bulk_lines(status.url)] == whole  # the next download is whole
    failed = client.run_bulk_query(orders.bulk_query(None))
    assert client.wait_bulk(failed, deadline=time.monotonic() + 30, poll_seconds=0.05,
                            sleep=time.sleep).status == "FAILED"
