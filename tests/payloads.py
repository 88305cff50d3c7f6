"""Small Shopify-shaped payloads for tests, built from the real samples with the fields a test cares about."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from tests.conftest import fixture_payload

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def _money(amount: Decimal | str, currency: str = "USD") -> dict[str, Any]:
    text = str(Decimal(amount).quantize(Decimal("0.01")))
    return {"shop_money": {"amount": text, "currency_code": currency},
            "presentment_money": {"amount": text, "currency_code": currency}}


def when(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def customer(customer_id: int, email: str | None, *, first: str = "Ana", last: str = "Silva",
             phone: str | None = None, updated: float = 0, country: str = "US") -> dict[str, Any]:
    return {
        "id": customer_id, "admin_graphql_api_id": f"gid://shopify/Customer/{customer_id}", "email": email,
        "first_name": first, "last_name": last, "phone": phone, "state": "enabled", "verified_email": True,
        "created_at": when(0), "updated_at": when(updated), "currency": "USD", "note": None,
        "default_address": {"country_code": country, "city": "Springfield", "phone": None}, "addresses": [],
    }


def order(order_id: int, *, customer_id: int | None = 1, email: str | None = "ana@example.com",
          total: str = "50.00", updated: float = 1, created: float = 1, number: int = 1001,
          cancelled: bool = False, fulfilled: bool = False, test: bool = False, lines: int = 1,
          product_id: int = 7001, checkout_token: str | None = None, cart_token: str | None = None,
          refunds: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    payload = copy.deepcopy(fixture_payload("orders_create__triggerdev.json"))
    amount = Decimal(total)
    unit = (amount / lines).quantize(Decimal("0.01"))
    payload.update({
        "id": order_id, "admin_graphql_api_id": f"gid://shopify/Order/{order_id}", "email": email,
        "contact_email": email, "name": f"#{number}", "order_number": number, "number": number - 1000,
        "created_at": when(created), "processed_at": when(created), "updated_at": when(updated),
        "cancelled_at": when(updated) if cancelled else None, "cancel_reason": "customer" if cancelled else None,
        "financial_status": "paid", "fulfillment_status": "fulfilled" if fulfilled else None, "test": test,
        "currency": "USD", "presentment_currency": "USD", "checkout_token": checkout_token,
        "cart_token": cart_token, "checkout_id": None,
        "total_price": str(amount), "total_price_set": _money(amount), "subtotal_price": str(amount),
        "subtotal_price_set": _money(amount), "total_tax": "0.00", "total_tax_set": _money("0"),
        "total_discounts": "0.00", "total_discounts_set": _money("0"), "total_shipping_price_set": _money("0"),
        "current_total_price": str(amount), "refunds": refunds or [], "discount_codes": [],
    })
    template = payload["line_items"][0]
    payload["line_items"] = []
    for i in range(lines):
        line = copy.deepcopy(template)
        line.update({"id": order_id * 10 + i, "admin_graphql_api_id": f"gid://shopify/LineItem/{order_id * 10 + i}",
                     "product_id": product_id + i, "variant_id": product_id * 10 + i, "title": f"Product {i}",
                     "quantity": 1, "price": str(unit), "price_set": _money(unit)})
        payload["line_items"].append(line)
    if customer_id is None:
        payload["customer"] = None
    else:
        payload["customer"] = {**customer(customer_id, email), "email_marketing_consent": None}
    return payload


def refund(refund_id: int, order_id: int, amount: str, *, line_item_id: int | None = None) -> dict[str, Any]:
    return {
        "id": refund_id, "admin_graphql_api_id": f"gid://shopify/Refund/{refund_id}", "order_id": order_id,
        "created_at": when(30), "processed_at": when(30), "note": None, "restock": False, "order_adjustments": [],
        "refund_line_items": [{"id": refund_id, "line_item_id": line_item_id or order_id * 10, "quantity": 1,
                               "subtotal_set": _money(amount), "total_tax_set": _money("0")}],
        "transactions": [{"kind": "refund", "status": "success", "amount": amount, "currency": "USD"}],
    }


def checkout(checkout_id: int, *, email: str | None, customer_id: int | None = None, total: str = "80.00",
             token: str = "chk-token", cart_token: str = "cart-token", updated: float = 0) -> dict[str, Any]:
    payload = copy.deepcopy(fixture_payload("checkouts_create__triggerdev.json"))
    payload.update({"id": checkout_id, "token": token, "cart_token": cart_token, "email": email,
                    "customer": customer(customer_id, email) if customer_id else None,
                    "total_price": total, "subtotal_price": total, "updated_at": when(updated),
                    "created_at": when(0), "completed_at": None,
                    "abandoned_checkout_url": f"https://test-store.myshopify.com/checkouts/ac/{cart_token}/recover"})
    return payload


def cart(token: str, *, updated: float = 0) -> dict[str, Any]:
    payload = copy.deepcopy(fixture_payload("carts_create__triggerdev.json"))
    payload.update({"id": token, "token": token, "updated_at": when(updated), "created_at": when(0)})
    return payload


def email_consent(customer_id: int, email: str, state: str, *, at: float) -> dict[str, Any]:
    return {"customer_id": customer_id, "email_address": email,
            "email_marketing_consent": {"state": state, "opt_in_level": "single_opt_in",
                                        "consent_updated_at": when(at)}}
