"""The simulated Shopify Admin GraphQL API, driven by the connector's own client over loopback."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from connector.sandbox.server import serve_in_thread
from connector.sandbox.shopify_admin import ShopifyAdminSandbox
from connector.shopify import ShopifyAuthFailed, ShopifyClient, ShopifyRejected


@pytest.fixture
def sandbox() -> Iterator[tuple[ShopifyAdminSandbox, str]]:
    shopify = ShopifyAdminSandbox(tokens={"t"}, bucket_size=25, restore_rate=100)
    server = serve_in_thread(shopify.app)
    yield shopify, server.url
    server.stop()


def _client(url: str, token: str = "t") -> ShopifyClient:
    return ShopifyClient("s.myshopify.com", token, api_version="2026-01", admin_url=url, http=httpx.Client())


def test_codes_are_unique_per_store_and_found_by_code(sandbox: tuple[ShopifyAdminSandbox, str]) -> None:
    shopify, url = sandbox
    client = _client(url)
    first = client.create_discount_code(code="R-1", title="t", amount=Decimal("5"), customer_id=7, starts_at="x")
    assert client.create_discount_code(code="r-1", title="t", amount=Decimal("5"), customer_id=7,
                                       starts_at="x") == first  # taken: the existing one is returned
    assert client.find_discount_code("R-1") == first and client.find_discount_code("R-2") is None
    assert len(shopify.discounts) == 1


def test_an_empty_bucket_throttles_and_the_client_waits_it_out(sandbox: tuple[ShopifyAdminSandbox, str]) -> None:
    shopify, url = sandbox
    client = _client(url)
    for i in range(6):  # 10 points each from a 25-point bucket restoring 100 per second
        client.create_discount_code(code=f"R-{i}", title="t", amount=Decimal("5"), customer_id=None, starts_at="x")
    assert len(shopify.discounts) == 6
    assert client.budget.maximum == 25


def test_a_wrong_token_and_an_unknown_field_are_refused(sandbox: tuple[ShopifyAdminSandbox, str]) -> None:
    _, url = sandbox
    with pytest.raises(ShopifyAuthFailed):
        _client(url, token="wrong").find_discount_code("R")
    with pytest.raises(ShopifyRejected, match="doesn't exist"):
        _client(url).graphql("{ shop { name } }")
