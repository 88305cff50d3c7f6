"""The simulated store's data as Shopify's Admin GraphQL serves it in bulk operations: JSONL, one object per line.

A store's resources are kept in their webhook (REST) shape (`SimulatedStore`); this module renders them as the
GraphQL objects a bulk query returns, with nested connections (order line items, checkout line items, product
collections) as separate lines carrying `__parentId`, the way `groupObjects: false` output looks. Children are
written one parent late, so a reader that expects them next to their parent is caught out, as it would be by
Shopify's own files. `write` renders a whole file, for the simulated Admin API and for stores that prepare theirs
in advance (`LargeStore`).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import IO, Any, NamedTuple

import orjson

JSON = dict[str, Any]

_SEARCH = re.compile(r"(updated_at|created_at):(>=|>|<=|<)'?([0-9T:\-\.Z+]+)'?")


def _gid(kind: str, ident: Any) -> str:
    return f"gid://shopify/{kind}/{ident}"


def _upper(value: Any) -> str | None:
    return value.upper() if isinstance(value, str) else None


def _money(money_set: Any, plain: Any = None, currency: str | None = None) -> JSON | None:
    if isinstance(money_set, Mapping):
        out = {}
        for rest, graphql in (("shop_money", "shopMoney"), ("presentment_money", "presentmentMoney")):
            money = money_set.get(rest)
            if isinstance(money, Mapping):
                out[graphql] = {"amount": str(money.get("amount")), "currencyCode": money.get("currency_code")}
        return out
    if plain is None:
        return None
    return {"shopMoney": {"amount": str(plain), "currencyCode": currency},
            "presentmentMoney": {"amount": str(plain), "currencyCode": currency}}


def _address(address: Any) -> JSON | None:
    if not isinstance(address, Mapping):
        return None
    return {"firstName": address.get("first_name"), "lastName": address.get("last_name"),
            "phone": address.get("phone"), "city": address.get("city"),
            "countryCodeV2": address.get("country_code")}


def _tags(tags: Any) -> list[str]:
    if isinstance(tags, list):
        return [str(t) for t in tags]
    return [t.strip() for t in str(tags or "").split(",") if t.strip()]


def _embedded_customer(customer: Any) -> JSON | None:
    if not isinstance(customer, Mapping) or not customer.get("id"):
        return None
    return {"id": _gid("Customer", customer["id"]), "firstName": customer.get("first_name"),
            "lastName": customer.get("last_name"),
            "defaultEmailAddress": {"emailAddress": customer["email"]} if customer.get("email") else None,
            "defaultPhoneNumber": {"phoneNumber": customer["phone"]} if customer.get("phone") else None}


@dataclass
class Consents:
    """The latest email and SMS consent of each customer, from the store's consent webhooks."""

    email: dict[int, JSON] = field(default_factory=dict)
    sms: dict[int, JSON] = field(default_factory=dict)

    @classmethod
    def from_deliveries(cls, deliveries: Iterable[Any]) -> Consents:
        found = cls()
        for delivery in deliveries:
            if delivery.topic == "customers_email_marketing_consent/update":
                payload = delivery.payload()
                found.email[int(payload["customer_id"])] = payload["email_marketing_consent"]
            elif delivery.topic == "customers_marketing_consent/update":
                payload = delivery.payload()
                found.sms[int(payload["id"])] = payload["sms_marketing_consent"]
        return found


def customer_node(customer: Mapping[str, Any], consents: Consents) -> JSON:
    email = consents.email.get(int(customer["id"])) or customer.get("email_marketing_consent") or {}
    sms = consents.sms.get(int(customer["id"])) or customer.get("sms_marketing_consent") or {}
    return {
        "id": _gid("Customer", customer["id"]), "firstName": customer.get("first_name"),
        "lastName": customer.get("last_name"), "note": customer.get("note"), "tags": _tags(customer.get("tags")),
        "locale": customer.get("locale"), "state": _upper(customer.get("state")),
        "createdAt": customer.get("created_at"), "updatedAt": customer.get("updated_at"),
        "defaultEmailAddress": {
            "emailAddress": customer["email"], "marketingState": _upper(email.get("state")) or "NOT_SUBSCRIBED",
            "marketingOptInLevel": _upper(email.get("opt_in_level")),
            "marketingUpdatedAt": email.get("consent_updated_at")} if customer.get("email") else None,
        "defaultPhoneNumber": {
            "phoneNumber": customer["phone"], "marketingState": _upper(sms.get("state")) or "NOT_SUBSCRIBED",
            "marketingOptInLevel": _upper(sms.get("opt_in_level")),
            "marketingUpdatedAt": sms.get("consent_updated_at"),
            "marketingCollectedFrom": sms.get("consent_collected_from")} if customer.get("phone") else None,
        "defaultAddress": _address(customer.get("default_address")),
        "birthDate": {"value": birth_date(int(customer["id"]))} if int(customer["id"]) % 4 == 0 else None,
    }


def birth_date(customer_id: int) -> str:
    """The birthday the simulated store keeps in a quarter of its customers' `facts.birth_date` metafield."""
    return f"{1960 + customer_id % 40}-{customer_id % 12 + 1:02d}-{customer_id % 28 + 1:02d}"


_FULFILMENT = {"fulfilled": "FULFILLED", "partial": "PARTIALLY_FULFILLED", "restocked": "RESTOCKED"}


def _refund_total(refund: Mapping[str, Any], shop_currency: str | None) -> JSON:
    """What came back to the buyer, in shop and presentment money (lines with their tax, less adjustments)."""
    shop, presentment, currency = Decimal(0), Decimal(0), shop_currency
    for line in refund.get("refund_line_items") or []:
        for key in ("subtotal_set", "total_tax_set"):
            money = line.get(key) or {}
            shop += Decimal(str((money.get("shop_money") or {}).get("amount") or 0))
            presentment += Decimal(str((money.get("presentment_money") or {}).get("amount") or 0))
            currency = (money.get("presentment_money") or {}).get("currency_code") or currency
    for adjustment in refund.get("order_adjustments") or []:
        for key in ("amount_set", "tax_amount_set"):
            money = adjustment.get(key) or {}
            shop -= Decimal(str((money.get("shop_money") or {}).get("amount") or 0))
            presentment -= Decimal(str((money.get("presentment_money") or {}).get("amount") or 0))
    if not refund.get("refund_line_items") and not refund.get("order_adjustments"):
        amounts = [Decimal(str(t.get("amount") or 0)) for t in refund.get("transactions") or []
                   if t.get("kind") == "refund" and t.get("status") in (None, "success")]
        shop = presentment = sum(amounts, Decimal(0))
    return {"shopMoney": {"amount": str(shop), "currencyCode": shop_currency},
            "presentmentMoney": {"amount": str(presentment), "currencyCode": currency}}


def order_rows(order: Mapping[str, Any]) -> tuple[JSON, list[JSON]]:
    gid = order.get("admin_graphql_api_id") or _gid("Order", order["id"])
    shop_currency = ((order.get("total_price_set") or {}).get("shop_money") or {}).get("currency_code")
    node = {
        "id": gid, "name": order.get("name"), "number": order.get("order_number"), "email": order.get("email"),
        "phone": order.get("phone"), "createdAt": order.get("created_at"), "updatedAt": order.get("updated_at"),
        "processedAt": order.get("processed_at"), "cancelledAt": order.get("cancelled_at"),
        "test": bool(order.get("test")), "taxesIncluded": bool(order.get("taxes_included")),
        "displayFinancialStatus": _upper(order.get("financial_status")),
        "displayFulfillmentStatus": _FULFILMENT.get(str(order.get("fulfillment_status")), "UNFULFILLED"),
        "currencyCode": shop_currency or order.get("currency"), "presentmentCurrencyCode": order.get("currency"),
        "discountCodes": [d.get("code") for d in order.get("discount_codes") or []],
        "tags": _tags(order.get("tags")), "sourceName": order.get("source_name"),
        "customerLocale": order.get("customer_locale"), "statusPageUrl": order.get("order_status_url"),
        "subtotalPriceSet": _money(order.get("subtotal_price_set"), order.get("subtotal_price")),
        "totalPriceSet": _money(order.get("total_price_set"), order.get("total_price")),
        "totalTaxSet": _money(order.get("total_tax_set"), order.get("total_tax")),
        "totalDiscountsSet": _money(order.get("total_discounts_set"), order.get("total_discounts")),
        "totalShippingPriceSet": _money(order.get("total_shipping_price_set")),
        "customer": _embedded_customer(order.get("customer")),
        "billingAddress": _address(order.get("billing_address")),
        "shippingAddress": _address(order.get("shipping_address")),
        "fulfillments": [{"createdAt": f.get("created_at"), "status": _upper(f.get("status"))}
                         for f in order.get("fulfillments") or []],
        "refunds": [{"id": r.get("admin_graphql_api_id") or _gid("Refund", r["id"]), "createdAt": r.get("created_at"),
                     "totalRefundedSet": _refund_total(r, shop_currency)} for r in order.get("refunds") or []],
    }
    lines = [{
        "id": line.get("admin_graphql_api_id") or _gid("LineItem", line["id"]), "title": line.get("title"),
        "variantTitle": line.get("variant_title"), "sku": line.get("sku"), "vendor": line.get("vendor"),
        "quantity": line.get("quantity"),
        "variant": {"id": _gid("ProductVariant", line["variant_id"])} if line.get("variant_id") else None,
        "product": {"id": _gid("Product", line["product_id"])} if line.get("product_id") else None,
        "originalUnitPriceSet": _money(line.get("price_set"), line.get("price")),
        "totalDiscountSet": _money(line.get("total_discount_set"), line.get("total_discount")),
        "taxLines": [{"priceSet": _money(t.get("price_set"), t.get("price"))} for t in line.get("tax_lines") or []],
        "__parentId": gid,
    } for line in order.get("line_items") or []]
    return node, lines


def product_rows(product: Mapping[str, Any]) -> tuple[JSON, list[JSON]]:
    gid = product.get("admin_graphql_api_id") or _gid("Product", product["id"])
    image = (product.get("image") or {}).get("src")
    node = {"id": gid, "title": product.get("title"), "handle": product.get("handle"),
            "productType": product.get("product_type"), "vendor": product.get("vendor"),
            "tags": _tags(product.get("tags")), "status": _upper(product.get("status")),
            "updatedAt": product.get("updated_at"),
            "featuredMedia": {"preview": {"image": {"url": image}}} if image else None}
    collections = [{"id": _gid("Collection", 9_000_000 + i), "title": title, "__parentId": gid}
                   for i, title in enumerate(_collections(product))]
    return node, collections


def _collections(product: Mapping[str, Any]) -> list[str]:
    """The simulated store files each product in its type's collection, and in "Sale" when it has that tag."""
    titles = [str(product["product_type"])] if product.get("product_type") else []
    return titles + (["Sale"] if "sale" in [t.lower() for t in _tags(product.get("tags"))] else [])


def checkout_rows(checkout: Mapping[str, Any]) -> tuple[JSON, list[JSON]]:
    gid = _gid("AbandonedCheckout", checkout["id"])
    currency = checkout.get("currency")
    node = {"id": gid, "name": checkout.get("name"), "abandonedCheckoutUrl": checkout.get("abandoned_checkout_url"),
            "createdAt": checkout.get("created_at"), "updatedAt": checkout.get("updated_at"),
            "completedAt": checkout.get("completed_at"), "taxesIncluded": bool(checkout.get("taxes_included")),
            "subtotalPriceSet": _money(checkout.get("subtotal_price_set"), checkout.get("subtotal_price"), currency),
            "totalPriceSet": _money(checkout.get("total_price_set"), checkout.get("total_price"), currency),
            "customer": _embedded_customer(checkout.get("customer")),
            "billingAddress": _address(checkout.get("billing_address")),
            "shippingAddress": _address(checkout.get("shipping_address"))}
    lines = [{"id": _gid("AbandonedCheckoutLineItem", f"{checkout['id']}{i}"), "title": line.get("title"),
              "sku": line.get("sku"), "quantity": line.get("quantity"),
              "variant": {"id": _gid("ProductVariant", line["variant_id"])} if line.get("variant_id") else None,
              "product": {"id": _gid("Product", line["product_id"])} if line.get("product_id") else None,
              "originalUnitPriceSet": _money(line.get("price_set"), line.get("price"), currency),
              "discountedTotalPriceSet": _money(line.get("line_price_set"), line.get("line_price"), currency),
              "__parentId": gid} for i, line in enumerate(checkout.get("line_items") or [])]
    return node, lines


def matches(obj: Mapping[str, Any], search: str | None) -> bool:
    """Shopify's search syntax, the part the connector uses: `updated_at:>'...'` and the like, ANDed."""
    for name, op, value in _SEARCH.findall(search or ""):
        have = obj.get(name)
        if not have:
            return False
        left = datetime.fromisoformat(str(have).replace("Z", "+00:00"))
        right = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if not {">": left > right, ">=": left >= right, "<": left < right, "<=": left <= right}[op]:
            return False
    return True


def _listed(resource: str, obj: Mapping[str, Any], search: str | None) -> bool:
    # abandonedCheckouts lists the checkouts that were not completed
    return matches(obj, search) and not (resource == "abandonedCheckouts" and obj.get("completed_at"))


def _graphql(resource: str, obj: Mapping[str, Any], consents: Consents) -> tuple[JSON, list[JSON]]:
    if resource == "customers":
        return customer_node(obj, consents), []
    return {"orders": order_rows, "products": product_rows, "abandonedCheckouts": checkout_rows}[resource](obj)


def rows(resource: str, objects: Iterable[Mapping[str, Any]], search: str | None, consents: Consents
         ) -> Iterator[JSON]:
    """The bulk file's objects: each parent, then the previous parent's children (never next to their own)."""
    late: list[JSON] = []
    for obj in objects:
        if not _listed(resource, obj, search):
            continue
        node, children = _graphql(resource, obj, consents)
        yield node
        yield from late
        late = children
    yield from late


NESTED = {"orders": "lineItems", "abandonedCheckouts": "lineItems", "products": "collections"}


class BulkFile(NamedTuple):
    """A bulk operation's JSONL file and what Shopify reports of it (`objectCount`, `rootObjectCount`)."""

    path: str
    objects: int
    roots: int


def write(resource: str, objects: Iterable[Mapping[str, Any]], search: str | None, consents: Consents,
          out: IO[bytes], *, nested: bool = True) -> tuple[int, int]:
    """A bulk file's lines written to `out` (nested rows left out when the query asks for none); returns how many
    objects and root objects it holds."""
    written = roots = 0
    for obj in rows(resource, objects, search, consents):
        if "__parentId" in obj and not nested:
            continue
        written += 1
        roots += "__parentId" not in obj
        out.write(orjson.dumps(obj, option=orjson.OPT_APPEND_NEWLINE))
    return written, roots


def _moment(value: Any) -> datetime:
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else datetime.min.replace(tzinfo=UTC)


def page(resource: str, objects: Iterable[Mapping[str, Any]], search: str | None, consents: Consents, *,
         first: int, after: str | None, by_updated: bool) -> tuple[JSON, int]:
    """One page of an ordinary connection query (`first`/`after`, `sortKey: UPDATED_AT` or by id), nested rows
    inline as edges; and how many objects and rows it holds (its actual query cost)."""
    def key(obj: Mapping[str, Any]) -> tuple[datetime, int]:
        return (_moment(obj.get("updated_at")) if by_updated else datetime.min.replace(tzinfo=UTC), int(obj["id"]))

    found = sorted((o for o in objects if _listed(resource, o, search)), key=key)
    if after:
        moment, _, ident = base64.b64decode(after).decode().rpartition("|")
        start = (datetime.fromisoformat(moment), int(ident))
        found = [o for o in found if key(o) > start]
    edges, size = [], 0
    for obj in found[:first]:
        node, children = _graphql(resource, obj, consents)
        if resource in NESTED:
            node[NESTED[resource]] = {"edges": [{"node": {k: v for k, v in child.items() if k != "__parentId"}}
                                                for child in children]}
        moment_, ident_ = key(obj)
        edges.append({"cursor": base64.b64encode(f"{moment_.isoformat()}|{ident_}".encode()).decode(), "node": node})
        size += 1 + len(children)
    info = {"hasNextPage": len(found) > first, "endCursor": edges[-1]["cursor"] if edges else None}
    return {"pageInfo": info, "edges": edges}, size


def count(resource: str, objects: Iterable[Mapping[str, Any]], search: str | None) -> int:
    return sum(1 for o in objects if _listed(resource, o, search))
