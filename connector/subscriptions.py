"""Webhook subscriptions of a merchant's own custom app: every topic the connector handles, registered on the
shop through the Admin API and repaired when one is missing (`connector shops check`). A public app declares
them, and the privacy topics, in `shopify.app.toml` instead; Shopify does not let the API subscribe to the
privacy topics."""

from __future__ import annotations

from dataclasses import dataclass, field

from connector.shopify import ShopifyClient, ShopifyRejected

WEBHOOK_PATH = "/webhooks/shopify"
PRIVACY_TOPICS = ("customers/data_request", "customers/redact", "shop/redact")


def handled_topics() -> list[str]:
    """The topics the connector applies (its handlers, and the uninstall), as Shopify names them in webhooks."""
    from sync.apply import TOPICS

    return sorted({*(t for t in TOPICS if not t.startswith("brevo/")), "app/uninstalled"})  # Brevo's come apart


def graphql_topic(topic: str) -> str:
    """orders/create -> ORDERS_CREATE (Shopify's WebhookSubscriptionTopic)."""
    return topic.replace("/", "_").upper()


@dataclass
class SubscriptionReport:
    address: str
    present: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # not there, and not created (a dry run)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (topic, Shopify's reason)
    elsewhere: list[tuple[str, str]] = field(default_factory=list)  # a handled topic sent to another address

    @property
    def complete(self) -> bool:
        return not self.missing and not self.failed


def check_subscriptions(client: ShopifyClient, address: str, *, repair: bool = True) -> SubscriptionReport:
    """Compare the shop's subscriptions with the topics the connector handles and create what is missing."""
    report = SubscriptionReport(address)
    existing = client.webhook_subscriptions()
    for topic in handled_topics():
        name = graphql_topic(topic)
        ours = [s for s in existing if s.topic == name]
        if any(s.uri == address for s in ours):
            report.present.append(topic)
            continue
        report.elsewhere += [(topic, s.uri) for s in ours]
        if not repair:
            report.missing.append(topic)
            continue
        try:
            client.create_webhook_subscription(name, address)
        except ShopifyRejected as exc:
            report.failed.append((topic, str(exc)))
        else:
            report.created.append(topic)
    return report
