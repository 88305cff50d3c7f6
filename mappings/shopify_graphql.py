"""Shopify Admin GraphQL objects (bulk operation rows, poll pages) -> the webhook payload shape. Pure: no I/O.

History read through GraphQL is written through the same parsers and appliers as webhooks (DESIGN 3.2): each
object is turned into the REST-shaped payload its webhook topic carries, then `mappings.shopify` reads it as it
reads a delivery. The queries below ask for exactly the fields these functions read (Admin API 2026-01 names:
`defaultEmailAddress`/`defaultPhoneNumber` instead of the deprecated `email`/`phone` and consent fields).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from connector import jsontext

JSON = dict[str, Any]  # a JSON object: a dict, and checked as one here (see `mappings.shopify`)

_MONEY = "shopMoney { amount currencyCode } presentmentMoney { amount currencyCode }"
_ADDRESS = "firstName lastName phone city countryCodeV2"

CUSTOMER_FIELDS = f"""
      id firstName lastName note tags locale state createdAt updatedAt
      birthDate: metafield(namespace: "facts", key: "birth_date") {{ value }}
      defaultEmailAddress {{ emailAddress marketingState marketingOptInLevel marketingUpdatedAt }}
      defaultPhoneNumber {{ phoneNumber marketingState marketingOptInLevel marketingUpdatedAt
                            marketingCollectedFrom }}
      defaultAddress {{ {_ADDRESS} }}"""

ORDER_FIELDS = f"""
      id name number email phone createdAt updatedAt processedAt cancelledAt test taxesIncluded
      displayFinancialStatus displayFulfillmentStatus currencyCode presentmentCurrencyCode
      discountCodes tags sourceName customerLocale statusPageUrl
      subtotalPriceSet {{ {_MONEY} }} totalPriceSet {{ {_MONEY} }} totalTaxSet {{ {_MONEY} }}
      totalDiscountsSet {{ {_MONEY} }} totalShippingPriceSet {{ {_MONEY} }}
      customer {{ id firstName lastName defaultEmailAddress {{ emailAddress }} defaultPhoneNumber {{ phoneNumber }} }}
      billingAddress {{ {_ADDRESS} }} shippingAddress {{ {_ADDRESS} }}
      fulfillments {{ createdAt status }}
      refunds {{ id createdAt totalRefundedSet {{ {_MONEY} }} }}
      lineItems {{ edges {{ node {{
        id title variantTitle sku vendor quantity
        variant {{ id }} product {{ id }}
        originalUnitPriceSet {{ {_MONEY} }} totalDiscountSet {{ {_MONEY} }}
        taxLines {{ priceSet {{ {_MONEY} }} }}
      }} }} }}"""

PRODUCT_FIELDS = """
      id title handle productType vendor tags status updatedAt
      featuredMedia { preview { image { url } } }
      collections { edges { node { id title } } }"""

CHECKOUT_FIELDS = f"""
      id name abandonedCheckoutUrl createdAt updatedAt completedAt taxesIncluded
      subtotalPriceSet {{ {_MONEY} }} totalPriceSet {{ {_MONEY} }}
      customer {{ id firstName lastName defaultEmailAddress {{ emailAddress }} defaultPhoneNumber {{ phoneNumber }} }}
      billingAddress {{ {_ADDRESS} }} shippingAddress {{ {_ADDRESS} }}
      lineItems {{ edges {{ node {{
        id title sku quantity variant {{ id }} product {{ id }}
        originalUnitPriceSet {{ {_MONEY} }} discountedTotalPriceSet {{ {_MONEY} }}
      }} }} }}"""


@dataclass(frozen=True)
class Resource:
    """One kind of history: its GraphQL root, the webhook topic its objects stand for, and its queries."""

    name: str  # customers | orders | products | checkouts
    root: str  # the GraphQL connection
    topic: str
    fields: str
    child_type: str | None  # the nested connection's node type, reassembled from `__parentId` rows
    nested: str | None  # the nested connection's field
    page_size: int  # objects per page of a poll, and nested rows per object, so that a page costs under
    nested_size: int  # Shopify's 1,000-point ceiling for one query
    sortable: bool  # has sortKey UPDATED_AT (abandonedCheckouts has not)

    def bulk_query(self, search: str | None) -> str:
        argument = f'(query: "{search}")' if search else ""
        return f"{{ {self.root}{argument} {{ edges {{ node {{{self.fields}\n    }} }} }} }}"

    def page_query(self) -> str:
        """One page of `updated_at`-bounded objects, nested rows inline (an ordinary query needs `first` on
        every connection, a bulk query none)."""
        fields = self.fields
        if self.nested:
            fields = fields.replace(f"{self.nested} {{", f"{self.nested}(first: {self.nested_size}) {{", 1)
        sort = ", sortKey: UPDATED_AT" if self.sortable else ""
        return (f"query page($first: Int!, $after: String, $query: String) {{\n"
                f"  {self.root}(first: $first, after: $after, query: $query{sort}) {{\n"
                f"    pageInfo {{ hasNextPage endCursor }}\n    edges {{ node {{{fields}\n    }} }}\n  }}\n}}")

    @property
    def page_cost(self) -> int:
        """Shopify's requested cost of one page: each object, and each nested row it may carry."""
        return self.page_size * (1 + (self.nested_size if self.nested else 0)) + 1

    def split(self, node: Mapping[str, Any]) -> tuple[JSON, list[JSON]]:
        """A page's object and its nested rows, in the shape a bulk file gives them (`mappings` reads both)."""
        obj = dict(node)
        if not self.nested:
            return obj, []
        connection = obj.pop(self.nested, None) or {}
        edges = connection.get("edges") if isinstance(connection, dict) else None
        return obj, [dict(e["node"]) for e in edges or [] if isinstance(e, dict) and isinstance(e.get("node"), dict)]


RESOURCES: dict[str, Resource] = {r.name: r for r in (
    Resource("customers", "customers", "customers/update", CUSTOMER_FIELDS, None, None, 100, 0, True),
    Resource("products", "products", "products/update", PRODUCT_FIELDS, "Collection", "collections", 50, 10, True),
    Resource("orders", "orders", "orders/updated", ORDER_FIELDS, "LineItem", "lineItems", 25, 30, True),
    Resource("checkouts", "abandonedCheckouts", "checkouts/update", CHECKOUT_FIELDS, "AbandonedCheckoutLineItem",
             "lineItems", 25, 30, False),
)}


def legacy_id(gid: Any) -> int | None:
    if not isinstance(gid, str):
        return None
    tail = gid.rsplit("/", 1)[-1].split("?", 1)[0]
    return int(tail) if tail.isdigit() else None


def _ref_id(value: Any) -> int | None:
    """The numeric id of a referenced object (`product { id }`), or None."""
    return legacy_id(value.get("id")) if isinstance(value, dict) else None


def _lower(value: Any) -> str | None:
    return value.lower() if isinstance(value, str) else None


def _money_set(value: Any) -> JSON | None:
    """GraphQL `MoneyBag` -> REST `*_set` (`shop_money`/`presentment_money`)."""
    if not isinstance(value, dict):
        return None
    out: JSON = {}
    for graphql, rest in (("shopMoney", "shop_money"), ("presentmentMoney", "presentment_money")):
        money = value.get(graphql)
        if isinstance(money, dict):
            out[rest] = {"amount": money.get("amount"), "currency_code": money.get("currencyCode")}
    return out


def _amount(value: Any) -> Any:
    money = _money_set(value)
    return ((money or {}).get("shop_money") or {}).get("amount")


def _address(value: Any) -> JSON | None:
    if not isinstance(value, dict):
        return None
    return {"first_name": value.get("firstName"), "last_name": value.get("lastName"), "phone": value.get("phone"),
            "city": value.get("city"), "country_code": value.get("countryCodeV2")}


def _consent(value: Any, channel: str) -> JSON | None:
    if not isinstance(value, dict) or not value.get("marketingState"):
        return None
    consent: JSON = {"state": _lower(value.get("marketingState")),
                     "opt_in_level": _lower(value.get("marketingOptInLevel")),
                     "consent_updated_at": value.get("marketingUpdatedAt")}
    if channel == "sms":
        consent["consent_collected_from"] = value.get("marketingCollectedFrom")
    return consent


def _contact(value: Any, key: str, field: str) -> Any:
    inner = value.get(key) if isinstance(value, dict) else None
    return inner.get(field) if isinstance(inner, dict) else None


def _tags(value: Any) -> Any:
    return ", ".join(map(str, value)) if isinstance(value, list) else value


def customer_payload(node: Mapping[str, Any]) -> JSON:
    email, phone = node.get("defaultEmailAddress"), node.get("defaultPhoneNumber")
    return {
        "id": legacy_id(node.get("id")), "admin_graphql_api_id": node.get("id"),
        "email": _contact(node, "defaultEmailAddress", "emailAddress"),
        "phone": _contact(node, "defaultPhoneNumber", "phoneNumber"),
        "first_name": node.get("firstName"), "last_name": node.get("lastName"), "note": node.get("note"),
        "tags": _tags(node.get("tags")), "locale": node.get("locale"), "state": _lower(node.get("state")),
        "created_at": node.get("createdAt"), "updated_at": node.get("updatedAt"),
        "birth_date": _contact(node, "birthDate", "value"),
        "default_address": _address(node.get("defaultAddress")),
        "email_marketing_consent": _consent(email, "email"),
        "sms_marketing_consent": _consent(phone, "sms"),
    }


def _embedded_customer(value: Any) -> JSON | None:
    if not isinstance(value, dict) or not value.get("id"):
        return None
    return {"id": legacy_id(value.get("id")), "admin_graphql_api_id": value.get("id"),
            "first_name": value.get("firstName"), "last_name": value.get("lastName"),
            "email": _contact(value, "defaultEmailAddress", "emailAddress"),
            "phone": _contact(value, "defaultPhoneNumber", "phoneNumber")}


_FULFILMENT = {"FULFILLED": "fulfilled", "PARTIALLY_FULFILLED": "partial", "RESTOCKED": "restocked"}


def _order_line(node: Mapping[str, Any]) -> JSON:
    return {
        "id": legacy_id(node.get("id")), "admin_graphql_api_id": node.get("id"),
        "product_id": _ref_id(node.get("product")),
        "variant_id": _ref_id(node.get("variant")),
        "title": node.get("title"), "variant_title": node.get("variantTitle"), "sku": node.get("sku"),
        "vendor": node.get("vendor"), "quantity": node.get("quantity", 0),
        "price_set": _money_set(node.get("originalUnitPriceSet")),
        "total_discount_set": _money_set(node.get("totalDiscountSet")),
        "tax_lines": [{"price_set": _money_set(t.get("priceSet"))} for t in node.get("taxLines") or []
                      if isinstance(t, dict)],
    }


def order_payload(node: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> JSON:
    order_id = legacy_id(node.get("id"))
    currency = node.get("currencyCode")
    refunds = []
    for refund in node.get("refunds") or []:
        if not isinstance(refund, dict):
            continue
        # The refunded total in shop money, as one successful refund transaction in the shop's currency.
        refunds.append({"id": legacy_id(refund.get("id")), "admin_graphql_api_id": refund.get("id"),
                        "order_id": order_id, "created_at": refund.get("createdAt"),
                        "transactions": [{"kind": "refund", "status": "success", "currency": currency,
                                          "amount": _amount(refund.get("totalRefundedSet")) or "0"}]})
    return {
        "id": order_id, "admin_graphql_api_id": node.get("id"), "name": node.get("name"),
        "order_number": node.get("number"), "email": node.get("email"), "phone": node.get("phone"),
        "created_at": node.get("createdAt"), "updated_at": node.get("updatedAt"),
        "processed_at": node.get("processedAt"), "cancelled_at": node.get("cancelledAt"),
        "test": bool(node.get("test")), "taxes_included": bool(node.get("taxesIncluded")),
        "financial_status": _lower(node.get("displayFinancialStatus")),
        "fulfillment_status": _FULFILMENT.get(str(node.get("displayFulfillmentStatus"))),
        "currency": node.get("presentmentCurrencyCode") or currency,
        "presentment_currency": node.get("presentmentCurrencyCode"),
        "subtotal_price_set": _money_set(node.get("subtotalPriceSet")),
        "total_price_set": _money_set(node.get("totalPriceSet")),
        "total_tax_set": _money_set(node.get("totalTaxSet")),
        "total_discounts_set": _money_set(node.get("totalDiscountsSet")),
        "total_shipping_price_set": _money_set(node.get("totalShippingPriceSet")),
        "discount_codes": [{"code": code} for code in node.get("discountCodes") or []],
        "tags": _tags(node.get("tags")), "source_name": node.get("sourceName"),
        "customer_locale": node.get("customerLocale"), "order_status_url": node.get("statusPageUrl"),
        "customer": _embedded_customer(node.get("customer")),
        "billing_address": _address(node.get("billingAddress")),
        "shipping_address": _address(node.get("shippingAddress")),
        "fulfillments": [{"created_at": f.get("createdAt"), "status": _lower(f.get("status"))}
                         for f in node.get("fulfillments") or [] if isinstance(f, dict)],
        "refunds": refunds,
        "line_items": [_order_line(line) for line in lines],
    }


def product_payload(node: Mapping[str, Any], collections: Sequence[Mapping[str, Any]]) -> JSON:
    image = (((node.get("featuredMedia") or {}).get("preview") or {}).get("image") or {}).get("url")
    return {
        "id": legacy_id(node.get("id")), "admin_graphql_api_id": node.get("id"), "title": node.get("title"),
        "handle": node.get("handle"), "product_type": node.get("productType"), "vendor": node.get("vendor"),
        "tags": _tags(node.get("tags")), "status": _lower(node.get("status")), "updated_at": node.get("updatedAt"),
        "image": {"src": image} if image else None,
        "collections": [str(c.get("title")) for c in collections if c.get("title")],
    }


def checkout_payload(node: Mapping[str, Any], lines: Sequence[Mapping[str, Any]]) -> JSON:
    customer = _embedded_customer(node.get("customer"))
    total = _money_set(node.get("totalPriceSet")) or {}
    url = node.get("abandonedCheckoutUrl")
    return {
        "id": legacy_id(node.get("id")), "token": None, "cart_token": _cart_token(url),
        "email": customer.get("email") if customer else None, "phone": customer.get("phone") if customer else None,
        "customer": customer, "currency": (total.get("shop_money") or {}).get("currency_code"),
        "subtotal_price_set": _money_set(node.get("subtotalPriceSet")), "total_price_set": total or None,
        "abandoned_checkout_url": url,
        "billing_address": _address(node.get("billingAddress")),
        "shipping_address": _address(node.get("shippingAddress")),
        "created_at": node.get("createdAt"), "updated_at": node.get("updatedAt"),
        "completed_at": node.get("completedAt"),
        "line_items": [{"product_id": _ref_id(li.get("product")), "variant_id": _ref_id(li.get("variant")),
                        "title": li.get("title"), "sku": li.get("sku"), "quantity": li.get("quantity", 0),
                        "price_set": _money_set(li.get("originalUnitPriceSet")),
                        "line_price_set": _money_set(li.get("discountedTotalPriceSet"))} for li in lines],
    }


def _cart_token(url: Any) -> str | None:
    """The cart token in a recovery URL (`.../checkouts/ac/<cart token>/recover?key=...`): GraphQL gives
    abandoned checkouts no token field, and the cart token is what ties a checkout to its cart."""
    if not isinstance(url, str) or "/checkouts/ac/" not in url:
        return None
    token = url.split("/checkouts/ac/", 1)[1].split("/", 1)[0]
    return token or None


def to_payload(resource: str, node: Mapping[str, Any], children: Sequence[Mapping[str, Any]] = ()) -> JSON:
    """The webhook-shaped payload of one GraphQL object with its nested rows."""
    if resource == "customers":
        return customer_payload(node)
    if resource == "orders":
        return order_payload(node, children)
    if resource == "products":
        return product_payload(node, children)
    if resource == "checkouts":
        return checkout_payload(node, children)
    raise ValueError(f"unknown resource {resource!r}")


def history_id(resource: Resource, node: Mapping[str, Any]) -> str:
    """An object's id as history: its version (resource, id, `updatedAt`), whoever read it."""
    return f"history:{resource.name}:{legacy_id(node.get('id'))}:{node.get('updatedAt') or ''}"


def assemble(resource: Resource, nodes: Iterable[JSON], children: Sequence[str]) -> Iterator[tuple[str, JSON]]:
    """Objects of a bulk file and their nested rows' lines (in file order) -> each object's history id and
    webhook-shaped payload, with its nested rows put back in it. One object at a time: a caller that keeps only
    what it makes of each payload holds one payload at a time."""
    nested: dict[str, list[JSON]] = defaultdict(list)
    for body in children:
        child = jsontext.loads(body)
        nested[str(child["__parentId"])].append(child)
    for node in nodes:
        yield history_id(resource, node), to_payload(resource.name, node, nested.get(str(node["id"]), []))


def parse_staged(resource: Resource, parse: Callable[[JSON], Any], parents: Sequence[str],
                 children: Sequence[str]) -> list[tuple[str, JSON | None, Any]]:
    """`assemble`, then each payload read by its topic's parser: (history id, None, record), or (history id,
    payload, None) for a payload the parser refuses, which the applier reads again to set it aside with the
    parser's reason (or to fail as it would have without a helper). Run in a helper process
    (`sync.backfill.HistoryReader`), so its result is what crosses back: the records, not the larger payloads."""
    parsed: list[tuple[str, JSON | None, Any]] = []
    for object_id, payload in assemble(resource, (jsontext.loads(body) for body in parents), children):
        try:
            parsed.append((object_id, None, parse(payload)))
        except Exception:  # the applier reads it again, and sets it aside or fails as it would have here
            parsed.append((object_id, payload, None))
    return parsed
