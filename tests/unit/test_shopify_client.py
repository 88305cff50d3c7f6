"""The Shopify Admin GraphQL client: pacing from Shopify's cost bucket, and every failure classified once."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from connector.shopify import (
    CostBudget,
    ShopifyAuthFailed,
    ShopifyClient,
    ShopifyRejected,
    ShopifyRetriable,
)

URL = "https://my-store.myshopify.com/admin/api/2026-01/graphql.json"


def _client(slept: list[float] | None = None) -> ShopifyClient:
    sink = slept if slept is not None else []
    return ShopifyClient("my-store.myshopify.com", "shpat_token", api_version="2026-01", http=httpx.Client(),
                         sleep=sink.append)


def _cost(available: float) -> dict[str, Any]:
    return {"cost": {"requestedQueryCost": 10, "actualQueryCost": 10,
                     "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": available,
                                        "restoreRate": 100.0}}}


def _created(discount_id: str = "gid://shopify/DiscountCodeNode/1") -> httpx.Response:
    return httpx.Response(200, json={"data": {"discountCodeBasicCreate": {"codeDiscountNode": {"id": discount_id},
                                                                          "userErrors": []}},
                                     "extensions": _cost(1990)})


@respx.mock
def test_a_code_is_created_for_one_customer_once_with_the_amount_in_shop_currency() -> None:
    route = respx.post(URL).mock(return_value=_created())
    discount_id = _client().create_discount_code(code="REWARD-ABC", title="Loyalty reward", amount=Decimal("5"),
                                                 customer_id=42, starts_at="2026-11-20T12:00:00+00:00")
    assert discount_id == "gid://shopify/DiscountCodeNode/1"
    sent = json.loads(route.calls[0].request.content)["variables"]["basicCodeDiscount"]
    assert sent["context"] == {"customers": {"add": ["gid://shopify/Customer/42"]}}
    assert sent["usageLimit"] == 1 and sent["customerGets"]["value"]["discountAmount"]["amount"] == "5.00"
    assert route.calls[0].request.headers["X-Shopify-Access-Token"] == "shpat_token"


@respx.mock
def test_a_throttled_query_waits_for_the_bucket_and_is_retried() -> None:
    slept: list[float] = []
    respx.post(URL).mock(side_effect=[
        httpx.Response(200, json={"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                                  "extensions": _cost(2.0)}),
        _created()])
    assert _client(slept).create_discount_code(code="C", title="t", amount=Decimal("5"), customer_id=None,
                                               starts_at="x") == "gid://shopify/DiscountCodeNode/1"
    assert slept and slept[0] == pytest.approx(0.08, abs=0.02)  # (10 - 2) points at 100 per second


@respx.mock
def test_a_refused_token_is_an_auth_failure_not_retried() -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(401, json={"errors": "[API] Invalid API key"}))
    with pytest.raises(ShopifyAuthFailed, match="reinstall or renew the token"):
        _client().find_discount_code("C")
    assert route.call_count == 1


@respx.mock
def test_server_errors_are_retried_briefly_then_left_to_the_caller() -> None:
    route = respx.post(URL).mock(return_value=httpx.Response(503))
    with pytest.raises(ShopifyRetriable, match="HTTP 503"):
        _client().find_discount_code("C")
    assert route.call_count == 3


@respx.mock
def test_a_code_shopify_already_holds_is_looked_up_instead_of_failing() -> None:
    respx.post(URL).mock(side_effect=[
        httpx.Response(200, json={"data": {"discountCodeBasicCreate": {"codeDiscountNode": None, "userErrors": [
            {"field": ["basicCodeDiscount", "code"], "code": "TAKEN", "message": "Code must be unique."}]}}}),
        httpx.Response(200, json={"data": {"codeDiscountNodeByCode": {"id": "gid://shopify/DiscountCodeNode/9"}}})])
    assert _client().create_discount_code(code="C", title="t", amount=Decimal("5"), customer_id=1,
                                          starts_at="x") == "gid://shopify/DiscountCodeNode/9"


@respx.mock
def test_other_user_errors_are_rejections_with_the_field_and_message() -> None:
    respx.post(URL).mock(return_value=httpx.Response(200, json={"data": {"discountCodeBasicCreate": {
        "codeDiscountNode": None, "userErrors": [{"field": ["basicCodeDiscount", "title"], "code": "BLANK",
                                                  "message": "can't be blank"}]}}}))
    with pytest.raises(ShopifyRejected, match="basicCodeDiscount.title: can't be blank"):
        _client().create_discount_code(code="C", title="", amount=Decimal("5"), customer_id=1, starts_at="x")


def test_the_budget_waits_only_for_what_the_bucket_lacks() -> None:
    budget = CostBudget()
    budget.update(_cost(5.0), now=100.0)
    assert budget.wait_for(10, now=100.0) == pytest.approx(0.05)
    assert budget.wait_for(10, now=101.0) == 0.0
    assert budget.wait_for(5000, now=100.0) == pytest.approx(19.95)  # never more than the bucket holds


@respx.mock
def test_a_refused_token_is_renewed_once_through_the_refresh_hook_and_the_query_sent_again() -> None:
    answered = httpx.Response(200, json={"data": {"ok": True}, "extensions": _cost(1990)})
    route = respx.post(URL).mock(side_effect=[httpx.Response(401, json={"errors": "expired"}), answered])
    renewed: list[str] = []

    def refresh(refused: str) -> str:
        renewed.append(refused)
        return "shpat_fresh"

    client = ShopifyClient("my-store.myshopify.com", "shpat_token", api_version="2026-01", http=httpx.Client(),
                           sleep=lambda _: None, refresh_token=refresh)
    assert client.graphql("{ ok }") == {"ok": True}
    assert renewed == ["shpat_token"]
    assert [c.request.headers["X-Shopify-Access-Token"] for c in route.calls] == ["shpat_token", "shpat_fresh"]


@respx.mock
def test_a_token_the_refresh_hook_cannot_renew_still_pauses_the_shop() -> None:
    respx.post(URL).mock(return_value=httpx.Response(401, json={"errors": "revoked"}))
    client = ShopifyClient("my-store.myshopify.com", "shpat_token", api_version="2026-01", http=httpx.Client(),
                           sleep=lambda _: None, refresh_token=lambda refused: None)
    with pytest.raises(ShopifyAuthFailed):
        client.graphql("{ ok }")


@respx.mock
def test_webhook_subscriptions_are_read_page_by_page_and_a_refused_one_says_why() -> None:
    pages = [
        {"edges": [{"node": {"id": "gid://shopify/WebhookSubscription/1", "topic": "ORDERS_CREATE",
                             "uri": "https://c.example.com/webhooks/shopify"}}],
         "pageInfo": {"hasNextPage": True, "endCursor": "c1"}},
        {"edges": [{"node": {"id": "gid://shopify/WebhookSubscription/2", "topic": "APP_UNINSTALLED",
                             "uri": "https://c.example.com/webhooks/shopify"}}],
         "pageInfo": {"hasNextPage": False, "endCursor": "c2"}},
    ]
    route = respx.post(URL).mock(side_effect=[
        httpx.Response(200, json={"data": {"webhookSubscriptions": page}, "extensions": _cost(1990)})
        for page in pages])
    found = _client().webhook_subscriptions()
    assert [(s.topic, s.uri) for s in found] == [("ORDERS_CREATE", "https://c.example.com/webhooks/shopify"),
                                                 ("APP_UNINSTALLED", "https://c.example.com/webhooks/shopify")]
    assert json.loads(route.calls[1].request.content)["variables"]["after"] == "c1"

    respx.post(URL).mock(return_value=httpx.Response(200, json={"data": {"webhookSubscriptionCreate": {
        "webhookSubscription": None,
        "userErrors": [{"field": ["webhookSubscription", "callbackUrl"],
                        "message": "Address for this topic has already been taken"}]}},
        "extensions": _cost(1990)}))
    with pytest.raises(ShopifyRejected, match="already been taken"):
        _client().create_webhook_subscription("ORDERS_CREATE", "https://c.example.com/webhooks/shopify")
