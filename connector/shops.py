"""The shop registry: which shops we sync, and the credentials each one uses."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session
from sqlmodel import col

from connector.clock import Clock, SystemClock
from connector.database import unit_of_work
from connector.models import Shop
from connector.secrets import SecretBox, SecretBoxError
from connector.settings import MissingSetting, Settings
from connector.shopify import ShopifyClient

SHOP_DOMAIN = re.compile(r"^[a-z0-9][a-z0-9-]*\.myshopify\.com$")


class ShopError(Exception):
    """A shop cannot be registered or used as asked."""


def normalise_domain(domain: str) -> str:
    value = domain.strip().lower().removeprefix("https://").removeprefix("http://").rstrip("/")
    if "." not in value:
        value = f"{value}.myshopify.com"
    if not SHOP_DOMAIN.match(value):
        raise ShopError(f"'{domain}' is not a shop domain like 'my-store.myshopify.com'")
    return value


@dataclass(frozen=True, kw_only=True)
class ShopCredentials:
    domain: str
    shopify_access_token: str | None
    brevo_api_key: str | None


def add_shop(engine: Engine, settings: Settings, *, domain: str, access_token: str, brevo_api_key: str,
             clock: Clock | None = None) -> int:
    """Register (or update) a shop with its tokens encrypted at rest."""
    if not settings.connector_secret_key:
        raise MissingSetting("CONNECTOR_SECRET_KEY", "is not set (needed to store a shop's tokens encrypted)")
    settings.require("CONNECTOR_SECRET_KEY")
    box = secret_box(settings)
    domain = normalise_domain(domain)
    now = (clock or SystemClock()).now()
    with unit_of_work(engine) as session:
        shop = shop_row(session, domain, now)
        shop.access_token_enc = box.seal(access_token)
        shop.brevo_api_key_enc = box.seal(brevo_api_key)
        shop.status, shop.paused_reason, shop.uninstalled_at = "active", None, None  # a reinstall carries on
        shop.brevo_ready_at = None  # the (possibly new) Brevo account needs our attributes and list
        session.flush()
        assert shop.id is not None
        return shop.id


def shop_row(session: Session, domain: str, now: datetime) -> Shop:
    """The shop with this domain, created (its loyalty program starting now) when there is none."""
    shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
    if shop is None:
        shop = Shop(domain=domain, created_at=now, loyalty_started_at=now, loyalty_rules_at=now)
        session.add(shop)
        session.flush()
    return shop


def secret_box(settings: Settings) -> SecretBox:
    if not settings.connector_secret_key:
        raise MissingSetting("CONNECTOR_SECRET_KEY", "is not set (shops' tokens are stored encrypted)")
    return SecretBox(settings.connector_secret_key, settings.connector_secret_key_previous)


SEALED_COLUMNS = ("access_token_enc", "refresh_token_enc", "client_secret_enc", "brevo_api_key_enc")


def rotate_secrets(engine: Engine, settings: Settings) -> tuple[int, list[str]]:
    """Seal every stored secret again with CONNECTOR_SECRET_KEY. Returns how many were resealed and the
    shops whose secrets open with neither key (left as they are, named for the operator)."""
    box = secret_box(settings)
    resealed, unreadable = 0, []
    with unit_of_work(engine) as session:
        # Locked: a renewal must not store a fresh token that this loop then overwrites with the old one.
        for shop in session.execute(sa.select(Shop).order_by(col(Shop.id)).with_for_update()).scalars():
            try:
                values = {name: box.reseal(getattr(shop, name)) for name in SEALED_COLUMNS if getattr(shop, name)}
            except SecretBoxError:
                unreadable.append(shop.domain)
                continue
            for name, value in values.items():
                setattr(shop, name, value)
            resealed += len(values)
    return resealed, unreadable


def ensure_single_store_shop(engine: Engine, settings: Settings, clock: Clock | None = None) -> int | None:
    """Custom-app mode: the shop named by SHOPIFY_SHOP exists, with its secrets read from the environment."""
    if not settings.single_store_mode:
        return None
    domain = normalise_domain(settings.shopify_shop or "")
    with unit_of_work(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
        if shop is None:
            now = (clock or SystemClock()).now()
            shop = Shop(domain=domain, created_at=now, loyalty_started_at=now, loyalty_rules_at=now)
            session.add(shop)
            session.flush()
        elif shop.status == "paused" and (shop.paused_reason or "").startswith("Brevo refused"):
            # A restart with (possibly) a corrected BREVO_API_KEY tries again.
            shop.status, shop.paused_reason = "active", None
        assert shop.id is not None
        return shop.id


def credentials(shop: Shop, settings: Settings) -> ShopCredentials:
    if shop.brevo_api_key_enc or shop.access_token_enc:
        if not settings.connector_secret_key:
            raise MissingSetting("CONNECTOR_SECRET_KEY", "is not set (shops' tokens are stored encrypted)")
        box = secret_box(settings)
        return ShopCredentials(
            domain=shop.domain,
            shopify_access_token=box.open(shop.access_token_enc) if shop.access_token_enc else None,
            brevo_api_key=box.open(shop.brevo_api_key_enc) if shop.brevo_api_key_enc else None)
    if settings.shopify_shop == shop.domain:
        return ShopCredentials(domain=shop.domain, shopify_access_token=settings.shopify_access_token,
                               brevo_api_key=settings.brevo_api_key)
    return ShopCredentials(domain=shop.domain, shopify_access_token=None, brevo_api_key=None)


def configure_shop(engine: Engine, domain: str, text: str) -> dict:
    """Validate a shop's mapping configuration (TOML) and store it. An invalid file changes nothing.

    The Brevo set-up runs again (it is idempotent: renamed attributes are created) and every contact is
    rebuilt, so Brevo receives the new names at once.
    """
    from mappings.shop_config import ShopConfig

    config = ShopConfig.from_toml(text)  # raises ConfigError naming the key
    domain = normalise_domain(domain)
    with unit_of_work(engine) as session:
        shop = session.execute(sa.select(Shop).where(col(Shop.domain) == domain)).scalar_one_or_none()
        if shop is None:
            raise ShopError(f"no shop {domain}: register it with `connector shops add` first")
        shop.config = config.to_dict()
        shop.brevo_ready_at = None
        shop.setup_due_at = None
        shop.rfm_due_at = None  # the recompute interval may have changed
        from connector.models import Contact

        session.execute(sa.update(Contact).where(col(Contact.shop_id) == shop.id).values(dirty=True))
    return config.to_dict()


def shopify_client(shop: Shop, settings: Settings, *, engine: Engine | None = None,
                   **kwargs: Any) -> ShopifyClient | None:
    """The shop's Admin API client (pinned version, the sandbox's address when set), or None without a token.
    With `engine`, an expiring token (a public app's) is renewed before it runs out, and once more when Shopify
    refuses it."""
    if engine is not None and (shop.refresh_token_enc or shop.client_secret_enc) and shop.id is not None:
        from connector.install import current_token

        shop_id = shop.id
        # When it could not be renewed, the stored token is tried: Shopify's refusal then pauses the shop.
        token = current_token(engine, settings, shop_id) or credentials(shop, settings).shopify_access_token
        if not token:
            return None
        return ShopifyClient(shop.domain, token, api_version=settings.shopify_api_version,
                             admin_url=settings.shopify_admin_url,
                             refresh_token=lambda refused: current_token(engine, settings, shop_id, refused=refused),
                             **kwargs)
    token = credentials(shop, settings).shopify_access_token
    if not token:
        return None
    return ShopifyClient(shop.domain, token, api_version=settings.shopify_api_version,
                         admin_url=settings.shopify_admin_url, **kwargs)
