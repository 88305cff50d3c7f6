"""Brevo's webhook payloads read for consent: which events are opt-outs, on which channel, for which address."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from mappings.brevo_webhooks import BrevoOptOut
from mappings.shopify import PayloadError


@pytest.mark.parametrize(("event", "reason"), [("unsubscribe", "unsubscribed"), ("unsubscribed", "unsubscribed"),
                                               ("hard_bounce", "hard_bounce"), ("hardBounce", "hard_bounce"),
                                               ("spam", "spam")])
def test_email_opt_outs_in_either_spelling_brevo_uses(event: str, reason: str) -> None:
    parsed = BrevoOptOut.from_payload({"event": event, "email": " Ana@Example.COM ", "id": 4, "ts_event": 1795168800})
    assert parsed is not None
    assert (parsed.channel, parsed.reason, parsed.address) == ("email", reason, "ana@example.com")
    assert parsed.occurred_at == datetime(2026, 11, 20, 10, tzinfo=UTC)


def test_an_sms_stop_is_read_from_the_phone_number_brevo_sends_without_its_plus() -> None:
    parsed = BrevoOptOut.from_payload({"event": "unsubscribe", "phone_number": "33612345678", "ts": 1795168800})
    assert parsed is not None and (parsed.channel, parsed.reason, parsed.address) == ("sms", "stop", "+33612345678")


def test_opens_clicks_and_deliveries_say_nothing_about_consent() -> None:
    for event in ("opened", "click", "delivered", "soft_bounce"):
        assert BrevoOptOut.from_payload({"event": event, "email": "ana@example.com"}) is None


def test_an_opt_out_without_a_usable_address_is_refused_with_the_reason() -> None:
    with pytest.raises(PayloadError, match="without an email or phone"):
        BrevoOptOut.from_payload({"event": "unsubscribe"})
    with pytest.raises(PayloadError, match="not an email address"):
        BrevoOptOut.from_payload({"event": "spam", "email": "nobody"})
