"""The public app over loopback: its page in the Shopify admin installs a shop on the first visit (token exchange
for an expiring offline token), connects Brevo once Brevo accepts the key, and the token is renewed before it
runs out and when Shopify refuses it, once however many workers ask."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import httpx
import jwt
import sqlalchemy as sa
from sqlmodel import col

from connector.clock import SystemClock
from connector.database import unit_of_work
from connector.install import current_token
from connector.models import Shop
from connector.shops import credentials, shopify_client
from tests.integration.harness import BREVO_KEY, CLIENT_ID, SECRET, Connector

NEW = "new-store.myshopify.com"


def session_token(shop: str = NEW, *, secret: str = SECRET, seconds: int = 60) -> str:
    now = int(time.time())
    return jwt.encode({"iss": f"https://{shop}/admin", "dest": f"https://{shop}", "aud": CLIENT_ID, "sub": "42",
                       "exp": now + seconds, "nbf": now - 5, "iat": now, "jti": uuid.uuid4().hex, "sid": "s1"},
                      secret, algorithm="HS256")


def _open(connector: Connector, token: str | None = None, shop: str = NEW) -> httpx.Response:
    query = {"shop": shop, "host": "YWRtaW4uc2hvcGlmeS5jb20vc3RvcmUvbmV3", "embedded": "1"}
    if token:
        query["id_token"] = token
    return connector.http.get(f"{connector.web.url}/app?{urlencode(query)}", follow_redirects=False)


def _post(connector: Connector, path: str, data: dict[str, str], token: str | None = None) -> httpx.Response:
    return connector.http.post(f"{connector.web.url}{path}", data=data,
                               headers={"Authorization": f"Bearer {token or session_token()}"})


def _shop(connector: Connector) -> Shop:
    with unit_of_work(connector.engine) as session:
        return session.execute(sa.select(Shop).where(col(Shop.domain) == NEW)).scalar_one()


def test_the_first_visit_installs_the_shop_with_an_expiring_token_and_shows_its_page(connector: Connector) -> None:
    page = _open(connector, session_token())
    assert page.status_code == 200, page.text
    assert page.headers["content-security-policy"] == \
        f"frame-ancestors https://{NEW} https://admin.shopify.com;"
    assert "Waiting for a Brevo API key" in page.text and NEW in page.text
    shop = _shop(connector)
    assert shop.refresh_token_enc and shop.access_token_expires_at and shop.status == "active"
    token = credentials(shop, connector.settings).shopify_access_token
    assert token in connector.shopify.tokens and token not in (shop.access_token_enc or "")  # sealed at rest
    assert "read_all_orders" in (shop.installed_scopes or "")

    again = _open(connector, session_token())  # a later visit: no second exchange
    assert again.status_code == 200 and credentials(_shop(connector), connector.settings).shopify_access_token == token


def test_without_a_valid_session_token_nothing_is_installed_or_changed(connector: Connector) -> None:
    bounce = _open(connector)
    assert bounce.status_code in (302, 303, 307) and "/app/patch-id-token" in bounce.headers["location"]
    forged = _open(connector, session_token(secret="not-the-app-secret"))
    assert forged.status_code in (302, 303, 307, 401)
    assert _post(connector, "/app/brevo", {"brevo_api_key": BREVO_KEY},
                 token=session_token(secret="not-the-app-secret")).status_code == 401
    assert connector.http.post(f"{connector.web.url}/app/brevo", data={"brevo_api_key": BREVO_KEY}).status_code == 401
    assert connector.rows("SELECT count(*) FROM shops WHERE domain = :d", d=NEW)[0][0] == 0
    patch = connector.http.get(f"{connector.web.url}/app/patch-id-token?shop={NEW}&shopify-reload=%2Fapp")
    assert patch.status_code == 200 and "app-bridge" in patch.text


def test_a_brevo_key_is_saved_only_once_brevo_accepts_it_and_the_shop_then_syncs(connector: Connector) -> None:
    _open(connector, session_token())
    wrong = _post(connector, "/app/brevo", {"brevo_api_key": "xkeysib-wrong"})
    assert wrong.status_code == 400 and "Brevo refused this API key" in wrong.json()["error"]
    assert _shop(connector).brevo_api_key_enc is None
    right = _post(connector, "/app/brevo", {"brevo_api_key": BREVO_KEY})
    assert right.status_code == 200 and right.json()["ok"]
    assert credentials(_shop(connector), connector.settings).brevo_api_key == BREVO_KEY
    connector.sync()
    assert _shop(connector).brevo_ready_at is not None  # attributes and list created in the shop's Brevo account
    assert "Syncing." in _open(connector, session_token()).text


def test_consent_is_chosen_per_channel_on_the_page(connector: Connector) -> None:
    _open(connector, session_token())
    saved = _post(connector, "/app/consent", {"email": "shopify", "sms": "both"})
    assert saved.status_code == 200 and saved.json()["consent"] == {"email": "shopify"}
    assert _post(connector, "/app/consent", {"email": "brevo"}).status_code == 400
    assert "<option value=shopify selected>" in _open(connector, session_token()).text


def test_an_expiring_token_is_renewed_before_its_end_and_once_when_refused_however_many_ask(
        connector: Connector) -> None:
    _open(connector, session_token())
    shop = _shop(connector)
    with unit_of_work(connector.engine) as session:
        session.execute(sa.update(Shop).where(col(Shop.id) == shop.id).values(
            access_token_expires_at=SystemClock().now() + timedelta(minutes=1)))
    client = shopify_client(_shop(connector), connector.settings, engine=connector.engine)
    assert client is not None and connector.shopify.refreshes == 1  # renewed before use
    assert "read_orders" in client.granted_scopes()

    refused = credentials(_shop(connector), connector.settings).shopify_access_token
    connector.shopify.tokens.discard(refused)  # Shopify no longer takes it
    assert "read_orders" in client.granted_scopes()  # renewed once, the query sent again
    assert connector.shopify.refreshes == 2

    # Two workers find the same token refused at once: one renews it, the other takes what it stored.
    refused = credentials(_shop(connector), connector.settings).shopify_access_token
    connector.shopify.tokens.discard(refused)
    found: list[str | None] = []
    workers = [threading.Thread(target=lambda: found.append(current_token(
        connector.engine, connector.settings, shop.id or 0, refused=refused))) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert connector.shopify.refreshes == 3 and len(set(found)) == 1 and found[0] in connector.shopify.tokens
