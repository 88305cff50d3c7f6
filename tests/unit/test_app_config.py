"""The app's configuration for Shopify (shopify.app.toml) subscribes to exactly the topics the connector handles,
and to the privacy topics, at the connector's webhook path."""

from __future__ import annotations

import tomllib
from pathlib import Path

from connector.install import SCOPES
from connector.settings import DEFAULT_SHOPIFY_API_VERSION
from connector.subscriptions import PRIVACY_TOPICS, WEBHOOK_PATH, graphql_topic, handled_topics

CONFIG = tomllib.loads((Path(__file__).parents[2] / "shopify.app.toml").read_text())


def test_the_app_subscribes_to_every_handled_topic_and_the_privacy_topics_at_the_webhook_path() -> None:
    subscriptions = CONFIG["webhooks"]["subscriptions"]
    topics = [t for s in subscriptions for t in s.get("topics", [])]
    compliance = [t for s in subscriptions for t in s.get("compliance_topics", [])]
    assert sorted(topics) == handled_topics()
    assert sorted(compliance) == sorted(PRIVACY_TOPICS)
    assert {s["uri"] for s in subscriptions} == {WEBHOOK_PATH}
    assert CONFIG["webhooks"]["api_version"] == DEFAULT_SHOPIFY_API_VERSION


def test_topics_are_named_as_shopify_enumerates_them_for_subscriptions() -> None:
    assert graphql_topic("orders/partially_fulfilled") == "ORDERS_PARTIALLY_FULFILLED"
    assert graphql_topic("customers_email_marketing_consent/update") == "CUSTOMERS_EMAIL_MARKETING_CONSENT_UPDATE"
    assert graphql_topic("app/uninstalled") == "APP_UNINSTALLED"


def test_the_install_asks_for_the_scopes_the_app_declares() -> None:
    assert CONFIG["access_scopes"]["scopes"] == SCOPES
