"""Webhook signatures: our constant-time check agrees with Shopify's own verifier, for both secrets."""

from __future__ import annotations

from shopify_app.verify.webhook import verify_webhook_req

from tests.conftest import fixture_bytes
from webhooks.intake import sign, verify_hmac


def _shopify_says(body: bytes, signature: str, secret: str, old: str | None = None) -> bool:
    config = {"client_id": "id", "client_secret": secret, **({"old_client_secret": old} if old else {})}
    request = {"method": "POST", "headers": {"X-Shopify-Hmac-Sha256": signature, "X-Shopify-Shop-Domain":
                                             "a.myshopify.com", "X-Shopify-Topic": "orders/create",
                                             "X-Shopify-API-Version": "2026-01", "X-Shopify-Webhook-Id": "w"},
               "body": body.decode()}
    return bool(verify_webhook_req(request, config).ok)  # type: ignore[arg-type]


def test_a_real_payload_signed_with_the_secret_verifies_like_shopifys_verifier() -> None:
    body = fixture_bytes("orders_create__triggerdev.json")
    signature = sign(body, "s3cret")
    assert verify_hmac(body, signature, ["s3cret"]) is True
    assert _shopify_says(body, signature, "s3cret") is True


def test_the_previous_secret_is_accepted_during_a_rotation() -> None:
    body = fixture_bytes("refunds_create__triggerdev.json")
    signature = sign(body, "old-secret")
    assert verify_hmac(body, signature, ["new-secret", "old-secret"]) is True
    assert _shopify_says(body, signature, "new-secret", old="old-secret") is True


def test_a_forged_tampered_or_missing_signature_is_refused() -> None:
    body = fixture_bytes("customers_create__triggerdev.json")
    assert verify_hmac(body, sign(body, "other"), ["s3cret"]) is False
    assert verify_hmac(body + b" ", sign(body, "s3cret"), ["s3cret"]) is False
    assert verify_hmac(body, None, ["s3cret"]) is False
    assert verify_hmac(body, "not base64!", ["s3cret"]) is False
    assert _shopify_says(body, sign(body, "other"), "s3cret") is False
