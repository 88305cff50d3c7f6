"""The storefront's app proxy: a signed request shows the logged-in buyer's points and asks for a reward code."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterator
from urllib.parse import urlencode

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.harness import SECRET, iter_connector
from tests.integration.test_loyalty_pipeline import Store
from tests.payloads import customer, order


@pytest.fixture
def store(engine: sa.Engine) -> Iterator[Store]:
    for connector in iter_connector(engine):
        yield Store(connector)


def _signed(path: str, *, customer_id: str | None = "1", shop: str = "test-store.myshopify.com",
            secret: str = SECRET, timestamp: int | None = None) -> str:
    params = {"shop": shop, "path_prefix": "/apps/loyalty", "timestamp": str(timestamp or int(time.time())),
              "logged_in_customer_id": customer_id or ""}
    message = "".join(f"{k}={v}" for k, v in sorted(params.items()))
    params["signature"] = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
    return f"{path}?{urlencode(params)}"


def _get(store: Store, path: str) -> httpx.Response:
    return store.connector.http.get(f"{store.connector.web.url}{path}")


def _post(store: Store, path: str) -> httpx.Response:
    return store.connector.http.post(f"{store.connector.web.url}{path}")


def _buyer(store: Store, total: str) -> None:
    store.post("customers/create", customer(1, "ana@example.com"))
    store.post("orders/create", order(9001, total=total))
    store.sync()


def test_a_logged_in_buyer_sees_their_own_points_and_tier(store: Store) -> None:
    _buyer(store, "100.00")
    response = _get(store, _signed("/proxy/loyalty"))
    assert response.status_code == 200
    body = response.json()
    assert (body["points"], body["tier"], body["next_tier"], body["points_to_next_tier"]) == (200, "Bronze",
                                                                                              "Silver", 300)
    assert body["can_redeem"] is False and body["reward_points"] == 500


def test_a_buyer_asks_for_a_reward_and_the_worker_creates_it(store: Store) -> None:
    _buyer(store, "530.00")  # 630 points
    response = _post(store, _signed("/proxy/loyalty/reward"))
    assert response.status_code == 202 and response.json()["status"] == "requested"
    store.sync()
    body = _get(store, _signed("/proxy/loyalty")).json()
    assert body["points"] == 130 and body["reward_code"].startswith("REWARD-")
    assert body["reward_code"].upper() in store.connector.shopify.discounts
    again = _post(store, _signed("/proxy/loyalty/reward"))
    assert again.status_code == 409 and "has 130 points; a reward takes 500" in again.json()["error"]


@pytest.mark.parametrize("tamper", ["secret", "stale", "customer"])
def test_unsigned_stale_or_tampered_requests_are_refused(store: Store, tamper: str) -> None:
    _buyer(store, "100.00")
    if tamper == "secret":
        path = _signed("/proxy/loyalty", secret="not-the-app-secret")
    elif tamper == "stale":
        path = _signed("/proxy/loyalty", timestamp=int(time.time()) - 600)
    else:  # another buyer's id swapped into a signed query
        path = _signed("/proxy/loyalty").replace("logged_in_customer_id=1", "logged_in_customer_id=2")
    assert _get(store, path).status_code == 401
    assert _post(store, path.replace("/proxy/loyalty", "/proxy/loyalty/reward")).status_code == 401
    assert store.connector.rows("SELECT count(*) FROM loyalty_rewards")[0][0] == 0


def test_a_visitor_who_is_not_logged_in_or_unknown_gets_a_clear_answer(store: Store) -> None:
    _buyer(store, "100.00")
    anonymous = _get(store, _signed("/proxy/loyalty", customer_id=None))
    assert anonymous.status_code == 403 and "log in" in anonymous.json()["error"]
    stranger = _get(store, _signed("/proxy/loyalty", customer_id="999"))
    assert stranger.status_code == 404 and "no buyer 999" in stranger.json()["error"]
    other_shop = _get(store, _signed("/proxy/loyalty", shop="other-store.myshopify.com"))
    assert other_shop.status_code == 404 and "no shop other-store.myshopify.com" in other_shop.json()["error"]
