"""Two-way consent over loopback: an opt-out in Brevo reaches the customer's consent in Shopify (as the shop
chose), is kept in the consent history, and Shopify's echo of it sends nothing back to Brevo."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx

from connector.clock import Clock, FixedClock
from connector.shops import configure_shop
from tests import payloads as p
from tests.integration.harness import SECRET, SHOP, Connector
from webhooks.brevo import brevo_webhook_token

EMAIL, PHONE = "uma.unsub@example.com", "+14155550123"


def _brevo(connector: Connector, payload: Any, *, token: str | None = None) -> httpx.Response:
    shop_id = connector.rows("SELECT id FROM shops WHERE domain = :d", d=SHOP)[0][0]
    address = f"{connector.web.url}/webhooks/brevo/{token or brevo_webhook_token(shop_id, SECRET)}"
    return connector.http.post(address, json=payload)


def _unsubscribe(event: str = "unsubscribe", **extra: Any) -> dict[str, Any]:
    return {"id": 91, "camp_id": 12, "email": EMAIL, "campaign name": "November news", "event": event,
            "date_event": "2026-11-20 10:00:00", "ts_event": 1795168800, "tag": "", **extra}


def _buyer(connector: Connector, clock: Clock | None = None) -> None:
    connector.post("customers/create", p.customer(601, EMAIL, first="Uma", phone=PHONE))
    connector.post("customers_email_marketing_consent/update", p.email_consent(601, EMAIL, "subscribed", at=1))
    connector.post("orders/create", p.order(9601, customer_id=601, email=EMAIL))
    connector.sync(clock=clock)


def _contact_calls(connector: Connector) -> int:
    return sum(1 for c in connector.brevo.calls if c.path.startswith("/v3/contacts") and c.method != "GET")


def test_a_brevo_unsubscribe_reaches_shopify_once_and_its_echo_sends_nothing_back(connector: Connector) -> None:
    # Time stands still here: the buyer's RFM recency is scored at each build, and a shop of one buyer leaves
    # the top recency score as soon as a thousandth of a day has passed since its thresholds were computed.
    # Such a move is a real change of the contact, sent to Brevo, and not the echo this test is about.
    clock = FixedClock(datetime.now(UTC))
    _buyer(connector, clock)
    held = connector.contact(EMAIL)["id"]
    with connector.brevo.lock:  # what Brevo itself does when the buyer unsubscribes there
        connector.brevo.contacts[held]["emailBlacklisted"] = True

    answer = _brevo(connector, _unsubscribe())
    assert answer.status_code == 200 and answer.json() == {"stored": 1, "ignored": 0}
    assert _brevo(connector, _unsubscribe()).status_code == 200  # Brevo retries: the same event, once
    connector.sync(clock=clock)

    assert connector.shopify.consent_updates == [{"customerId": "gid://shopify/Customer/601", "channel": "email",
                                                  "state": "UNSUBSCRIBED", "at": "2026-11-20T10:00:00+00:00"}]
    history = connector.rows("SELECT channel, state, source FROM consent_history ORDER BY id")
    assert history[-1] == ("email", "unsubscribed", "brevo:unsubscribed")
    assert connector.rows("SELECT status FROM outbox WHERE target = 'shopify_consent'") == [("delivered",)]

    # Shopify tells us back, as a consent webhook: nothing goes to Brevo, the contact stays opted out there.
    before = _contact_calls(connector)
    connector.post("customers_email_marketing_consent/update", {
        **p.email_consent(601, EMAIL, "unsubscribed", at=0),
        "email_marketing_consent": {"state": "unsubscribed", "opt_in_level": "single_opt_in",
                                    "consent_updated_at": "2026-11-20T10:00:01+00:00"}})
    connector.sync(clock=clock)
    assert _contact_calls(connector) == before
    assert connector.contact(EMAIL)["emailBlacklisted"] is True
    assert len(connector.shopify.consent_updates) == 1


def test_hard_bounces_spam_complaints_and_sms_stops_count_as_opt_outs(connector: Connector) -> None:
    _buyer(connector)
    _brevo(connector, [_unsubscribe("hard_bounce", id=92), _unsubscribe("spam", id=93, reason="undesired"),
                       {"event": "unsubscribe", "phone_number": PHONE.removeprefix("+"), "ts_event": 1795168900}])
    connector.sync()
    sources = {(c, s) for c, _, s in connector.rows("SELECT channel, state, source FROM consent_history")}
    assert {("email", "brevo:hard_bounce"), ("email", "brevo:spam"), ("sms", "brevo:stop")} <= sources
    # Shopify hears once per channel: the second email opt-out finds nothing left to change... until Shopify's
    # own webhook says so, each is written (Shopify keeps the latest).
    channels = sorted({u["channel"] for u in connector.shopify.consent_updates})
    assert channels == ["email", "sms"]


def test_a_shop_that_keeps_consent_in_shopify_records_brevo_opt_outs_without_writing_them(
        connector: Connector) -> None:
    configure_shop(connector.engine, SHOP, '[consent]\nemail = "shopify"\n')
    _buyer(connector)
    _brevo(connector, _unsubscribe())
    connector.sync()
    assert connector.shopify.consent_updates == []
    assert ("email", "unsubscribed", "brevo:unsubscribed") in connector.rows(
        "SELECT channel, state, source FROM consent_history")


def test_brevo_webhooks_need_the_shop_token_and_only_opt_outs_are_kept(connector: Connector) -> None:
    _buyer(connector)
    shop_id = connector.rows("SELECT id FROM shops WHERE domain = :d", d=SHOP)[0][0]
    forged = [brevo_webhook_token(shop_id, "not-the-secret"), brevo_webhook_token(shop_id + 1, SECRET)[:-1] + "0",
              "nothing", f"{shop_id}", "².abc", f"{shop_id}.é"]
    for token in forged:
        assert _brevo(connector, _unsubscribe(), token=token).status_code == 401, token
    assert _brevo(connector, _unsubscribe(), token=brevo_webhook_token(shop_id + 1, SECRET)).status_code == 401
    shop_url = f"{connector.web.url}/webhooks/brevo/{brevo_webhook_token(shop_id, SECRET)}"
    assert connector.http.post(shop_url, content=b"{not json").status_code == 400
    opened = _brevo(connector, {"event": "opened", "email": EMAIL, "id": 94})
    assert opened.status_code == 200 and opened.json() == {"stored": 0, "ignored": 1}
    # An opt-out without an address is kept and quarantined with its reason, not lost.
    assert _brevo(connector, {"event": "unsubscribe", "id": 95}).status_code == 200
    connector.sync()
    [(status, error)] = connector.rows("SELECT status, error FROM inbox WHERE topic = 'brevo/opt_out'")
    assert status == "failed" and "without an email or phone" in error
    assert connector.shopify.consent_updates == []
