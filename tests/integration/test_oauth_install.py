"""The authorization-code install over loopback: /auth/install sends the merchant to Shopify's consent screen with
a one-time state; Shopify's signed redirect to /auth/callback is checked (signature, shop, state) before its code
is exchanged for the shop's token. Forged, replayed and late callbacks are refused with the reason."""

from __future__ import annotations

import hashlib
import hmac
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx

from connector.clock import SystemClock
from connector.database import unit_of_work
from connector.install import SCOPES
from connector.models import OAuthState
from connector.shops import credentials, shopify_client
from tests.integration.harness import BREVO_KEY, CLIENT_ID, PUBLIC_URL, SECRET, SECRET_KEY, Connector
from tests.integration.test_app_home import NEW, _shop
from tests.integration.test_cli import _connector


def _install(connector: Connector, shop: str = NEW) -> httpx.Response:
    return connector.http.get(f"{connector.web.url}/auth/install", params={"shop": shop}, follow_redirects=False)


def _approve(connector: Connector, consent_url: str) -> dict[str, str]:
    """Shopify's part: the merchant approves, Shopify redirects back with a signed code."""
    parts = urlsplit(consent_url)
    answer = connector.http.get(f"{connector.shopify_server.url}{parts.path}?{parts.query}",
                                headers={"Host": parts.hostname or ""}, follow_redirects=False)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{PUBLIC_URL}/auth/callback"
    return dict(parse_qsl(back.query))


def _callback(connector: Connector, params: dict[str, str]) -> httpx.Response:
    return connector.http.get(f"{connector.web.url}/auth/callback?{urlencode(params)}", follow_redirects=False)


def _signed(params: dict[str, str]) -> dict[str, str]:
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k != "hmac")
    return {**params, "hmac": hmac.new(SECRET.encode(), message.encode(), hashlib.sha256).hexdigest()}


def test_an_install_through_shopifys_consent_screen_registers_the_shop_with_its_token(connector: Connector) -> None:
    start = _install(connector)
    assert start.status_code == 302
    consent = urlsplit(start.headers["location"])
    query = dict(parse_qsl(consent.query))
    assert consent.hostname == NEW and consent.path == "/admin/oauth/authorize"
    assert query["client_id"] == CLIENT_ID and query["scope"] == SCOPES
    assert query["redirect_uri"] == f"{PUBLIC_URL}/auth/callback" and len(query["state"]) >= 32

    back = _approve(connector, start.headers["location"])
    done = _callback(connector, back)
    assert done.status_code == 302 and done.headers["location"] == f"https://{NEW}/admin/apps/{CLIENT_ID}"
    shop = _shop(connector)
    assert shop.status == "active" and credentials(shop, connector.settings).shopify_access_token in \
        connector.shopify.tokens
    assert shop.refresh_token_enc  # an expiring token, renewed like the embedded install's

    replay = _callback(connector, back)
    assert replay.status_code == 400 and "already used state" in replay.json()["error"]


def test_forged_late_or_misdirected_callbacks_are_refused_and_change_nothing(connector: Connector) -> None:
    assert _install(connector, "not a shop").status_code == 400
    assert _install(connector, "evil.example.com").status_code == 400
    back = _approve(connector, _install(connector).headers["location"])

    assert _callback(connector, {**back, "hmac": "é"}).status_code == 401  # not even hex: refused, not a crash
    forged = _callback(connector, {**back, "shop": "other-store.myshopify.com"})  # the signature no longer holds
    assert forged.status_code == 401 and "hmac" in forged.json()["error"]
    misdirected = _callback(connector, _signed({**back, "shop": "other-store.myshopify.com"}))
    assert misdirected.status_code == 400 and "state" in misdirected.json()["error"]

    with unit_of_work(connector.engine) as session:
        session.add(OAuthState(state="old-state", shop_domain=NEW,
                               created_at=SystemClock().now() - timedelta(minutes=11)))
    late = _callback(connector, _signed({**back, "state": "old-state"}))
    assert late.status_code == 400 and "too long" in late.json()["error"]
    assert connector.rows("SELECT count(*) FROM shops WHERE domain IN (:a, :b)", a=NEW,
                          b="other-store.myshopify.com")[0][0] == 0


def test_a_custom_app_registered_by_its_client_credentials_gets_its_tokens_exchanged_and_renewed(
        connector: Connector, tmp_path: Path) -> None:
    env = {"DATABASE_URL": connector.engine.url.render_as_string(hide_password=False),
           "CONNECTOR_SECRET_KEY": SECRET_KEY, "SHOPIFY_ADMIN_URL": connector.shopify_server.url}
    wrong = _connector("shops", "add", "--domain", NEW, "--client-id", CLIENT_ID, "--client-secret", "not-it",
                       "--brevo-api-key", BREVO_KEY, env=env, cwd=tmp_path)
    assert wrong.returncode == 2 and "refused the client credentials" in wrong.stderr
    added = _connector("shops", "add", "--domain", NEW, "--client-id", CLIENT_ID, "--client-secret", SECRET,
                       "--brevo-api-key", BREVO_KEY, env=env, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    shop = _shop(connector)
    assert shop.client_id == CLIENT_ID and shop.client_secret_enc and SECRET not in shop.client_secret_enc
    first = credentials(shop, connector.settings).shopify_access_token
    assert first in connector.shopify.tokens and connector.shopify.client_grants == 1

    connector.shopify.tokens.discard(first)  # a day later: Shopify no longer takes it
    client = shopify_client(shop, connector.settings, engine=connector.engine)
    assert client is not None and "read_orders" in client.granted_scopes()
    assert connector.shopify.client_grants == 2
