"""Staged bulk lines read as their webhook topic's records: what the helper process of a backfill returns."""

from __future__ import annotations

import json
import pickle
from decimal import Decimal

from connector.models import Contact
from mappings.shopify import CustomerRecord, OrderRecord
from mappings.shopify_graphql import RESOURCES, assemble, parse_staged
from sync.apply import prepare, wanted_by
from sync.backfill import _in_file_order, _object_id, _unfolded

ORDER = {"id": "gid://shopify/Order/5001", "name": "#1001", "number": 1001, "email": "Ada@Example.com",
         "createdAt": "2026-05-01T10:00:00Z", "updatedAt": "2026-05-02T10:00:00Z", "currencyCode": "EUR",
         "totalPriceSet": {"shopMoney": {"amount": "30.00", "currencyCode": "EUR"}},
         "subtotalPriceSet": {"shopMoney": {"amount": "25.00", "currencyCode": "EUR"}},
         "refunds": [{"id": "gid://shopify/Refund/9", "createdAt": "2026-05-03T10:00:00Z",
                      "totalRefundedSet": {"shopMoney": {"amount": "5.00", "currencyCode": "EUR"}}}]}
LINES = [{"id": f"gid://shopify/LineItem/{n}", "title": f"Mug {n}", "quantity": n, "product": {"id": "gid://shopify/Product/7"},
          "originalUnitPriceSet": {"shopMoney": {"amount": "12.50", "currencyCode": "EUR"}},
          "__parentId": "gid://shopify/Order/5001"} for n in (1, 2)]


def _lines(*objects: dict[str, object]) -> list[str]:
    return [json.dumps(o) for o in objects]


def test_a_staged_order_and_its_lines_are_read_as_the_webhook_parser_reads_its_payload() -> None:
    orders = RESOURCES["orders"]
    [(object_id, payload)] = assemble(orders, [ORDER], _lines(*LINES))
    [(same_id, no_payload, record)] = parse_staged(orders, OrderRecord.from_payload, _lines(ORDER), _lines(*LINES))
    assert object_id == same_id == "history:orders:5001:2026-05-02T10:00:00Z"
    assert no_payload is None and record == OrderRecord.from_payload(payload)
    assert [line.quantity for line in record.lines] == [1, 2] and record.refunds[0].amount == Decimal("5.00")
    assert pickle.loads(pickle.dumps(record)) == record  # what crosses back from the helper process


def test_an_object_the_parser_refuses_comes_back_with_its_payload_to_be_set_aside() -> None:
    broken = {"id": "gid://shopify/Customer/8", "updatedAt": "not a time", "defaultEmailAddress": {
        "emailAddress": "grace@example.com"}}
    fine = {"id": "gid://shopify/Customer/9", "updatedAt": "2026-05-02T10:00:00Z"}
    [(_, payload, none), (_, no_payload, record)] = parse_staged(
        RESOURCES["customers"], CustomerRecord.from_payload, _lines(broken, fine), [])
    assert none is None and payload is not None and payload["email"] == "grace@example.com"
    assert no_payload is None and record.customer_id == 9


def test_a_staged_line_s_id_is_read_from_its_start_or_else_from_its_json() -> None:
    assert _object_id(json.dumps(ORDER, separators=(",", ":"))) == "gid://shopify/Order/5001"
    assert _object_id(json.dumps({"name": "#1", "id": "gid://shopify/Order/7"})) == "gid://shopify/Order/7"
    assert _object_id('{"id":"gid://shopify/Order/\\u0038","a":1}') == "gid://shopify/Order/8"  # escaped


def test_history_looks_up_a_customer_by_email_only_for_a_guest_and_no_buyer_s_other_orders() -> None:
    orders = RESOURCES["orders"]
    [(_, _, guest)] = parse_staged(orders, OrderRecord.from_payload, _lines(ORDER), _lines(*LINES))
    customer_order = {**ORDER, "id": "gid://shopify/Order/5002", "customer": {"id": "gid://shopify/Customer/3"}}
    [(_, _, known)] = parse_staged(orders, OrderRecord.from_payload, _lines(customer_order), [])
    assert guest.contact_key == "e:ada@example.com" and known.contact_key == "c:3"
    wanted = prepare([guest, known], "shop.myshopify.com").wanted
    # The guest may be a customer with that email; the customer's order is theirs. History makes no live event,
    # so no buyer's earlier orders are counted (a live batch looks them up for its purchase events).
    assert wanted.customers_by["email"] == {"ada@example.com"}
    assert wanted.order_keys == set() and wanted_by([guest, known]).order_keys == {"e:ada@example.com", "c:3"}
    assert {"c:3", "e:ada@example.com"} <= wanted.rows[Contact]  # the guest keys a customer would absorb, too


def test_nested_lines_staged_with_their_object_and_apart_are_read_in_the_file_s_order() -> None:
    rows = [(4, "order 4\nline 5\nline 6"), (9, "order 9")]
    own, nested = _unfolded(rows)
    assert own == ["order 4", "order 9"]
    assert _in_file_order(nested, []) == ["line 5", "line 6"]
    apart = [(12, "line 12"), (2, "line 2"), (8, "line 8")]  # staged in rows of their own: any order
    assert _in_file_order(nested, apart) == ["line 2", "line 5", "line 6", "line 8", "line 12"]
