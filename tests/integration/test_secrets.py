"""Stored tokens and Brevo keys are encrypted at rest, and the key can be rotated without losing one."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from connector.database import unit_of_work
from connector.models import Shop
from connector.settings import Settings
from connector.shops import add_shop, credentials, rotate_secrets
from tests.integration.test_cli import _connector

OLD, NEW = "the-old-secret-key", "the-new-secret-key"


def _settings(engine: Engine, key: str, previous: str | None = None) -> Settings:
    return Settings(DATABASE_URL=engine.url.render_as_string(hide_password=False), CONNECTOR_SECRET_KEY=key,
                    CONNECTOR_SECRET_KEY_PREVIOUS=previous, _env_file=None)  # type: ignore[call-arg]


def _shops(engine: Engine) -> list[Shop]:
    with unit_of_work(engine) as session:
        return list(session.query(Shop).order_by(Shop.id))  # type: ignore[arg-type]


def test_a_rotated_key_opens_every_stored_secret_and_the_old_one_no_longer_does(engine: Engine,
                                                                                 tmp_path: Path) -> None:
    old = _settings(engine, OLD)
    add_shop(engine, old, domain="one.myshopify.com", access_token="shpat_one", brevo_api_key="xkeysib-one")
    add_shop(engine, old, domain="two.myshopify.com", access_token="shpat_two", brevo_api_key="xkeysib-two")
    stored = [shop.access_token_enc for shop in _shops(engine)]
    assert all(s and "shpat" not in s for s in stored)  # never in clear

    env = {"DATABASE_URL": old.database_url, "CONNECTOR_SECRET_KEY": NEW, "CONNECTOR_SECRET_KEY_PREVIOUS": OLD}
    result = _connector("secrets", "rotate", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 stored secrets" in result.stdout

    for shop in _shops(engine):
        opened = credentials(shop, _settings(engine, NEW))  # the new key alone opens them
        assert opened.shopify_access_token == f"shpat_{shop.domain.split('.')[0]}"
        assert opened.brevo_api_key == f"xkeysib-{shop.domain.split('.')[0]}"
    assert [shop.access_token_enc for shop in _shops(engine)] != stored


def test_a_secret_that_opens_with_neither_key_is_named_and_left_alone(engine: Engine) -> None:
    add_shop(engine, _settings(engine, "a-lost-key"), domain="lost.myshopify.com", access_token="shpat_lost",
             brevo_api_key="xkeysib-lost")
    add_shop(engine, _settings(engine, OLD), domain="kept.myshopify.com", access_token="shpat_kept",
             brevo_api_key="xkeysib-kept")
    resealed, unreadable = rotate_secrets(engine, _settings(engine, NEW, previous=OLD))
    assert (resealed, unreadable) == (2, ["lost.myshopify.com"])
