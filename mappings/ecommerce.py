"""Brevo ecommerce objects: products, categories and live orders, so Brevo's own product blocks and order-based
segments work. Pure: mirror values in, Brevo request bodies out.

Categories are the shop's product types (and collections when known), identified by a stable slug so that
a renamed product type becomes a new category rather than rewriting another one.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from mappings.events import Buyer, product_url
from mappings.shopify import OrderRecord

BREVO_ORDER = "brevo_order"  # outbox event name of an ecommerce order status (target "order")
HISTORY_ORDER = "order_history"  # outbox target of an order read as history: sent in `historical` batches


def category_id(kind: str, name: str) -> str:
    slug = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-") or hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{kind}-{slug}"


@dataclass(frozen=True, kw_only=True)
class CatalogProduct:
    product_id: int
    title: str | None
    handle: str | None
    product_type: str | None
    vendor: str | None
    image_url: str | None
    collections: tuple[str, ...]
    deleted: bool
    price: Decimal | None = None  # the last price it sold at, when known


def categories_of(product: CatalogProduct) -> list[tuple[str, str]]:
    """(id, name) of the categories a product belongs to."""
    found = [(category_id("type", product.product_type), product.product_type)] if product.product_type else []
    found += [(category_id("collection", c), c) for c in product.collections]
    return found


def category_body(cid: str, name: str, shop_domain: str) -> dict[str, Any]:
    return {"id": cid, "name": name, "url": f"https://{shop_domain}/search?q={name.replace(' ', '+')}"}


def product_body(product: CatalogProduct, shop_domain: str) -> dict[str, Any]:
    body: dict[str, Any] = {"id": str(product.product_id), "name": product.title or f"Product {product.product_id}",
                            "categories": [cid for cid, _ in categories_of(product)]}
    url = product_url(shop_domain, product.handle)
    if url:
        body["url"] = url
    if product.image_url:
        body["imageUrl"] = product.image_url
    if product.price is not None:
        body["price"] = float(product.price)
    if product.vendor:
        body["metaInfo"] = {"vendor": product.vendor}
    if product.deleted:
        body["isDeleted"] = True
    return body


def order_status(order: OrderRecord) -> str:
    """The order's state in the words Brevo shows: the last thing that happened to it."""
    if order.cancelled_at is not None:
        return "cancelled"
    if order.financial_status in ("refunded", "partially_refunded"):
        return order.financial_status
    if order.fulfillment_status == "fulfilled":
        return "fulfilled"
    if order.financial_status in ("paid", "partially_paid", "authorized"):
        return "paid"
    return "pending"


def order_body(order: OrderRecord, buyer: Buyer, shop_domain: str, status: str,
               updated_at: datetime | None) -> dict[str, Any]:
    created = order.created_at.isoformat() if order.created_at else ""
    changed = updated_at or order.updated_at or order.created_at
    body: dict[str, Any] = {
        "id": str(order.order_id),
        "createdAt": created,
        "updatedAt": changed.isoformat() if changed else created,
        "status": status,
        "amount": float(order.total),
        "products": [{"productId": str(line.product_id or f"line-{line.line_id}"),
                      **({"variantId": str(line.variant_id)} if line.variant_id else {}),
                      "quantity": line.quantity, "price": float(line.price)} for line in order.lines],
        "identifiers": buyer.identifiers(),
        "storeId": shop_domain,
        "metaInfo": {"order_name": order.name or "", "currency": order.currency or ""},
    }
    if order.discount_codes:
        body["coupons"] = list(order.discount_codes)
    return body

