"""Installs and tokens of the public app.

Shopify installs an embedded app itself (managed installation); the first time the app's page opens in the
Shopify admin, its session token (an ID token signed with the app's secret) is exchanged for an **expiring
offline access token** and a refresh token (`shopifyapp.token_exchange`). Both are stored encrypted. The access
token lasts about an hour: the shop's Shopify client renews it shortly before it expires, and once more when
Shopify refuses it, through `refresh_access_token`. A refresh is single-flight per shop: the shop's row is
locked while it runs, and a worker that waited for the lock takes the token the other one stored instead of
refreshing again (a refresh token is good for one use).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode, urlsplit

import httpx
import sqlalchemy as sa
from shopify_app import AppConfig, exchange_using_client_credentials, refresh_access_token, token_exchange
from sqlalchemy.engine import Engine
from sqlmodel import col

from connector.clock import Clock, SystemClock, as_utc
from connector.database import is_sqlite, unit_of_work
from connector.models import OAuthState, Shop
from connector.settings import MissingSetting, Settings
from connector.shops import ShopError, normalise_domain, secret_box, shop_row

log = logging.getLogger("connector.install")

RENEW_BEFORE = timedelta(minutes=5)  # an access token this close to its end is renewed before use


class InstallError(Exception):
    """Shopify did not give the app a token, or the install request was not Shopify's; the message says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def app_config(settings: Settings) -> AppConfig:
    if not settings.shopify_api_key or not settings.shopify_api_secret:
        raise MissingSetting("SHOPIFY_API_KEY" if not settings.shopify_api_key else "SHOPIFY_API_SECRET",
                             "is not set (the public app needs its client id and secret)")
    return {"client_id": settings.shopify_api_key, "client_secret": settings.shopify_api_secret,
            "old_client_secret": settings.shopify_api_secret_previous}


class _ToAdmin(httpx.BaseTransport):
    """Sends `https://{shop}/...` to SHOPIFY_ADMIN_URL (the simulated Shopify): shopifyapp builds shop URLs itself."""

    def __init__(self, base: str) -> None:
        self.base = httpx.URL(base)
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme=self.base.scheme, host=self.base.host, port=self.base.port)
        request.headers["host"] = self.base.netloc.decode()
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def shopify_http(settings: Settings) -> httpx.Client:
    """The HTTP client for Shopify's OAuth endpoints (pointed at the simulated Shopify when configured)."""
    if settings.shopify_admin_url:
        return httpx.Client(transport=_ToAdmin(settings.shopify_admin_url), timeout=20.0)
    return httpx.Client(timeout=20.0)


def _moment(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def _store(shop: Shop, settings: Settings, token: Any) -> None:
    box = secret_box(settings)
    shop.access_token_enc = box.seal(str(token.token))
    shop.access_token_expires_at = _moment(token.expires)
    shop.refresh_token_enc = box.seal(str(token.refresh_token)) if token.refresh_token else None
    shop.refresh_token_expires_at = _moment(token.refresh_token_expires)
    if token.scope:
        shop.installed_scopes = str(token.scope)


def install_with_id_token(engine: Engine, settings: Settings, id_token: Any, *, http: httpx.Client | None = None,
                          clock: Clock | None = None) -> int:
    """Exchange a verified session token for the shop's expiring offline token; register (or revive) the shop.
    Returns the shop's id."""
    claims = getattr(id_token, "claims", None) or {}
    domain = normalise_domain(urlsplit(str(claims.get("dest", ""))).hostname or "")
    client = http or shopify_http(settings)
    result = token_exchange("offline", app_config(settings), id_token=id_token, expiring=True, http_client=client)
    if not result.ok or result.access_token is None:
        raise InstallError(f"Shopify gave no access token for {domain}: {result.log.detail}")
    now = (clock or SystemClock()).now()
    with unit_of_work(engine) as session:
        shop = shop_row(session, domain, now)
        _store(shop, settings, result.access_token)
        if shop.status == "uninstalled" or (shop.paused_reason or "").startswith("Shopify refused"):
            shop.status, shop.paused_reason, shop.uninstalled_at = "active", None, None
        session.flush()
        assert shop.id is not None
        log.info("shop %s installed (scopes %s)", domain, shop.installed_scopes)
        return shop.id


_RENEWING: dict[int, threading.Lock] = {}
_RENEWING_GUARD = threading.Lock()


def _renewal_lock(shop_id: int) -> threading.Lock:
    with _RENEWING_GUARD:
        return _RENEWING.setdefault(shop_id, threading.Lock())


def current_token(engine: Engine, settings: Settings, shop_id: int, *, refused: str | None = None,
                  http: httpx.Client | None = None, clock: Clock | None = None) -> str | None:
    """The shop's access token, renewed first when it is about to expire or Shopify just `refused` it. None when
    there is none, or it cannot be renewed (no refresh token, or Shopify refused the refresh token or the app's
    credentials too).

    Single-flight per shop: this process's threads take turns on a lock, and on PostgreSQL the shop's row stays
    locked (FOR UPDATE) through the renewal, so another process waits and then finds the new token. On SQLite
    (one process) the write lock is not held while Shopify answers."""
    now = (clock or SystemClock()).now()
    box = secret_box(settings)
    with _renewal_lock(shop_id), unit_of_work(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.id) == shop_id).with_for_update()).scalar_one_or_none()
        if shop is None or not shop.access_token_enc:
            return None
        token = box.open(shop.access_token_enc)
        expires = as_utc(shop.access_token_expires_at)
        if refused is not None and token != refused:
            return token  # renewed meanwhile by another worker
        if refused is None and (expires is None or expires > now + RENEW_BEFORE):
            return token
        if not (shop.client_secret_enc and shop.client_id) and not shop.refresh_token_enc:
            return None if refused is not None else token
        if is_sqlite(engine):
            session.commit()  # SQLite's write lock is everyone's: not held across the call to Shopify
        client = http or shopify_http(settings)
        if shop.client_secret_enc and shop.client_id:  # a merchant's own app: exchange its credentials again
            try:
                fresh: Any = _client_credentials(shop.domain, shop.client_id, box.open(shop.client_secret_enc),
                                                 client)
            except InstallError as exc:
                log.warning("shop %s: %s", shop.domain, exc)
                return None
        else:
            assert shop.refresh_token_enc is not None
            refresh_expires = as_utc(shop.refresh_token_expires_at)
            result = refresh_access_token({
                "shop": shop.domain.removesuffix(".myshopify.com"), "access_mode": "offline",
                "refresh_token": box.open(shop.refresh_token_enc), "expires": "",  # renew now, whatever its end
                "refresh_token_expires": refresh_expires.astimezone(UTC).isoformat() if refresh_expires else ""},
                app_config(settings), http_client=client)
            if not result.ok or result.access_token is None or not result.access_token.token:
                log.warning("shop %s: the access token could not be renewed: %s", shop.domain, result.log.detail)
                return None
            fresh = result.access_token
        _store(shop, settings, fresh)
        log.info("shop %s: access token renewed", shop.domain)
        return str(fresh.token)


# --- the authorization-code install (a non-embedded install, or an app not using managed installation) ---------

# The scopes the app asks for; shopify.app.toml declares the same (a test keeps them equal).
SCOPES = "read_customers,write_customers,read_orders,read_all_orders,read_products,write_discounts"
STATE_SECONDS = 600
CALLBACK_PATH = "/auth/callback"


def begin_install(engine: Engine, settings: Settings, shop: str, *, clock: Clock | None = None) -> str:
    """Where to send the merchant: Shopify's consent screen for `shop`, with a one-time state bound to it."""
    config = app_config(settings)
    if not settings.public_url:
        raise MissingSetting("CONNECTOR_PUBLIC_URL", "is not set (Shopify sends the merchant back to it)")
    domain = normalise_domain(shop)
    state = secrets.token_urlsafe(24)
    with unit_of_work(engine) as session:
        session.add(OAuthState(state=state, shop_domain=domain, created_at=(clock or SystemClock()).now()))
    query = urlencode({"client_id": config["client_id"], "scope": SCOPES, "state": state,
                       "redirect_uri": f"{settings.public_url}{CALLBACK_PATH}"})
    return f"https://{domain}/admin/oauth/authorize?{query}"


def query_signed(params: Mapping[str, str], settings: Settings) -> bool:
    """Shopify's signature of an OAuth redirect: hex HMAC-SHA256 of the other parameters, sorted, as a query
    string, with the app's secret (or the previous one); compared in constant time."""
    given = params.get("hmac", "")
    message = "&".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in ("hmac", "signature"))
    ok = False
    for secret in settings.webhook_secrets:
        expected = hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()
        ok |= hmac.compare_digest(expected.encode(), given.encode())  # bytes: any text compares, none raises
    return ok and bool(given)


def finish_install(engine: Engine, settings: Settings, params: Mapping[str, str], *, http: httpx.Client | None = None,
                   clock: Clock | None = None) -> str:
    """Check Shopify's redirect (signature, shop, one-time state), exchange its code for the shop's offline
    token and register the shop. Returns its domain; raises InstallError saying what was wrong."""
    now = (clock or SystemClock()).now()
    if not query_signed(params, settings):
        raise InstallError("the request is not signed by Shopify (hmac)", status=401)
    try:
        domain = normalise_domain(params.get("shop", ""))
    except ShopError as exc:
        raise InstallError(str(exc)) from None
    with unit_of_work(engine) as session:  # taken whatever happens next: a state is good for one try
        issued = session.get(OAuthState, params.get("state", ""))
        if issued is not None:
            session.delete(issued)
    if issued is None or issued.shop_domain != domain:
        raise InstallError("unknown or already used state: start the install again")
    created = as_utc(issued.created_at)
    if created is None or now - created > timedelta(seconds=STATE_SECONDS):
        raise InstallError("the install took too long (state expired): start it again")
    config = app_config(settings)
    client = http or shopify_http(settings)
    try:
        response = client.post(f"https://{domain}/admin/oauth/access_token", json={
            "client_id": config["client_id"], "client_secret": config["client_secret"],
            "code": params.get("code", ""), "expiring": 1})
    except httpx.HTTPError as exc:
        raise InstallError(f"Shopify could not be reached ({type(exc).__name__}): start the install again",
                           status=502) from None
    try:
        body = response.json()
        if not isinstance(body, dict):
            raise ValueError("not an object")
        if response.status_code != 200 or not body.get("access_token"):
            raise InstallError(f"Shopify refused the code (HTTP {response.status_code}: "
                               f"{body.get('error_description') or body.get('error') or 'no token'})")
        token = SimpleNamespace(
            token=str(body["access_token"]), scope=body.get("scope"), refresh_token=body.get("refresh_token"),
            expires=(now + timedelta(seconds=int(body["expires_in"]))).isoformat() if body.get("expires_in")
            else None,
            refresh_token_expires=(now + timedelta(seconds=int(body["refresh_token_expires_in"]))).isoformat()
            if body.get("refresh_token_expires_in") else None)
    except (ValueError, TypeError) as exc:
        raise InstallError(f"Shopify's answer to the code could not be read (HTTP {response.status_code}: {exc})",
                           status=502) from None
    with unit_of_work(engine) as session:
        shop = shop_row(session, domain, now)
        _store(shop, settings, token)
        if shop.status != "active":
            shop.status, shop.paused_reason, shop.uninstalled_at = "active", None, None
    log.info("shop %s installed through the authorization code", domain)
    return domain


# --- a merchant's own app, by its client credentials ------------------------------------------------------------


def _client_credentials(domain: str, client_id: str, client_secret: str, http: httpx.Client) -> Any:
    config: AppConfig = {"client_id": client_id, "client_secret": client_secret, "old_client_secret": None}
    result = exchange_using_client_credentials(domain.removesuffix(".myshopify.com"), config, http_client=http)
    if not result.ok or result.access_token is None:
        raise InstallError(f"Shopify refused the client credentials of {domain}: {result.log.detail}")
    token = result.access_token
    return SimpleNamespace(token=token.token, expires=token.expires, scope=token.scope, refresh_token=None,
                           refresh_token_expires=None)


def add_by_client_credentials(engine: Engine, settings: Settings, *, domain: str, client_id: str, client_secret: str,
                              brevo_api_key: str, http: httpx.Client | None = None) -> int:
    """Register a shop by its custom app's client id and secret (kept encrypted): a first token is exchanged at
    once, so wrong credentials are refused here, with Shopify's reason."""
    from connector.shops import add_shop

    domain = normalise_domain(domain)
    token = _client_credentials(domain, client_id, client_secret, http or shopify_http(settings))
    shop_id = add_shop(engine, settings, domain=domain, access_token=str(token.token), brevo_api_key=brevo_api_key)
    with unit_of_work(engine) as session:
        shop = session.get(Shop, shop_id)
        assert shop is not None
        _store(shop, settings, token)
        shop.client_id, shop.client_secret_enc = client_id, secret_box(settings).seal(client_secret)
    return shop_id
