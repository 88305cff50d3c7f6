"""`connector shops check` against the simulated Admin API over loopback: a custom-app shop is subscribed to
every topic the connector handles, once; what is missing is reported (a dry run) or created."""

from __future__ import annotations

from pathlib import Path

from connector.subscriptions import handled_topics
from tests.integration.harness import ADMIN_TOKEN, SHOP, Connector
from tests.integration.test_cli import _connector

PUBLIC = "https://connector.example.com"
ADDRESS = f"{PUBLIC}/webhooks/shopify"


def _env(connector: Connector, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": connector.engine.url.render_as_string(hide_password=False), "SHOPIFY_SHOP": SHOP,
            "SHOPIFY_ACCESS_TOKEN": ADMIN_TOKEN, "SHOPIFY_ADMIN_URL": connector.shopify_server.url,
            "COLUMNS": "200", **extra}


def test_a_custom_app_shop_is_subscribed_to_every_handled_topic_once(connector: Connector, tmp_path: Path) -> None:
    connector.shopify.subscriptions["gid://shopify/WebhookSubscription/7"] = {
        "topic": "ORDERS_CREATE", "uri": "https://old-host.example.com/hooks", "format": "JSON"}
    dry = _connector("shops", "check", "--dry-run", env=_env(connector, CONNECTOR_PUBLIC_URL=PUBLIC), cwd=tmp_path)
    assert dry.returncode == 1 and "missing webhook subscriptions" in dry.stderr
    assert "orders/create also goes to https://old-host.example.com/hooks" in dry.stdout
    assert len(connector.shopify.subscriptions) == 1

    first = _connector("shops", "check", env=_env(connector, CONNECTOR_PUBLIC_URL=PUBLIC), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    ours = sorted(s["topic"] for s in connector.shopify.subscriptions.values() if s["uri"] == ADDRESS)
    assert ours == sorted(t.replace("/", "_").upper() for t in handled_topics())
    assert "compliance_topics" in first.stdout

    again = _connector("shops", "check", env=_env(connector, CONNECTOR_PUBLIC_URL=PUBLIC), cwd=tmp_path)
    assert again.returncode == 0
    assert len(connector.shopify.subscriptions) == len(handled_topics()) + 1  # nothing created twice


def test_shops_check_needs_an_https_address_and_a_working_token(connector: Connector, tmp_path: Path) -> None:
    missing = _connector("shops", "check", env=_env(connector), cwd=tmp_path)
    assert missing.returncode == 2 and "CONNECTOR_PUBLIC_URL" in missing.stderr
    plain = _connector("shops", "check", "--webhook-url", "http://connector.example.com/webhooks/shopify",
                       env=_env(connector), cwd=tmp_path)
    assert plain.returncode == 2 and "https" in plain.stderr
    revoked = _connector("shops", "check", env=_env(connector, CONNECTOR_PUBLIC_URL=PUBLIC,
                                                     SHOPIFY_ACCESS_TOKEN="revoked"), cwd=tmp_path)
    assert revoked.returncode == 1 and "refused the access token" in revoked.stdout
