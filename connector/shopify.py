"""The Shopify Admin GraphQL client: one pinned API version, cost-aware pacing, errors classified once.

Shopify meters GraphQL by query cost: every response carries `extensions.cost.throttleStatus` (bucket size,
what is left, restore rate per second). The client keeps that per shop and waits before a query that the
bucket cannot pay for, instead of being refused. A refusal anyway (`THROTTLED`, HTTP 429) and server errors
are retried with tenacity; 401/403 mean the token is no longer valid and the shop must be paused.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from mappings.identity import customer_gid
from mappings.shopify_graphql import JSON, Resource

CENT = Decimal("0.01")


class ShopifyError(Exception):
    """A Shopify call failed for a reason that retrying will not fix."""


class ShopifyAuthFailed(ShopifyError):
    """The access token was refused (revoked, expired, uninstalled): pause the shop."""


class ShopifyRetriable(ShopifyError):
    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ShopifyRejected(ShopifyError):
    """Shopify refused the request itself (GraphQL errors, userErrors): it would fail again."""

    def __init__(self, message: str, codes: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.codes = codes


@dataclass
class CostBudget:
    """Shopify's leaky bucket for one shop, as its last answer described it."""

    maximum: float = 2000.0
    available: float = 2000.0
    restore_rate: float = 100.0  # points per second
    seen_at: float = 0.0  # monotonic time of that answer

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds to wait before a query of this (estimated) cost fits in the bucket."""
        have = min(self.maximum, self.available + (now - self.seen_at) * self.restore_rate)
        need = min(cost, self.maximum)
        return 0.0 if have >= need else (need - have) / self.restore_rate

    def update(self, extensions: Mapping[str, Any] | None, now: float) -> None:
        status = ((extensions or {}).get("cost") or {}).get("throttleStatus") or {}
        if status:
            self.maximum = float(status.get("maximumAvailable", self.maximum))
            self.available = float(status.get("currentlyAvailable", self.available))
            self.restore_rate = float(status.get("restoreRate", self.restore_rate)) or self.restore_rate
            self.seen_at = now


@dataclass(frozen=True)
class BulkStatus:
    id: str
    status: str  # CREATED | RUNNING | COMPLETED | FAILED | CANCELED | CANCELING | EXPIRED
    error_code: str | None
    objects: int
    url: str | None

    @property
    def finished(self) -> bool:
        return self.status in ("COMPLETED", "FAILED", "CANCELED", "EXPIRED")


@dataclass(frozen=True)
class Page:
    """One page of a resource: each object with its nested rows, and where the next page starts."""

    objects: list[tuple[JSON, list[JSON]]]
    end_cursor: str | None
    has_next: bool


@dataclass(frozen=True)
class Subscription:
    id: str
    topic: str  # GraphQL name: ORDERS_CREATE
    uri: str


class BulkBusy(ShopifyRetriable):
    """The shop already runs as many bulk queries as Shopify allows: start this one later."""


class BulkTimedOut(ShopifyRetriable):
    """A bulk operation still runs past the caller's deadline."""


class _BulkQueries:
    """Bulk operations (mixed into the client): start a query, read its status, stream its JSONL file."""

    graphql: Callable[..., dict[str, Any]]
    http: httpx.Client

    def run_bulk_query(self, query: str) -> str:
        data = self.graphql(BULK_RUN, {"query": query})
        payload = data.get("bulkOperationRunQuery") or {}
        errors = payload.get("userErrors") or []
        if any(str(e.get("code")) == "LIMIT_REACHED" for e in errors):
            raise BulkBusy("; ".join(str(e.get("message")) for e in errors), retry_after=5.0)
        if errors:
            raise ShopifyRejected("; ".join(str(e.get("message")) for e in errors),
                                  tuple(str(e.get("code")) for e in errors))
        operation = payload.get("bulkOperation") or {}
        if not operation.get("id"):
            raise ShopifyRejected("Shopify started no bulk operation and gave no reason")
        return str(operation["id"])

    def bulk_operation(self, operation_id: str) -> BulkStatus:
        node = self.graphql(BULK_STATUS, {"id": operation_id}, cost=1).get("node")
        if not isinstance(node, dict):
            raise ShopifyRejected(f"Shopify knows no bulk operation {operation_id}")
        return BulkStatus(id=operation_id, status=str(node.get("status")), error_code=node.get("errorCode"),
                          objects=int(node.get("objectCount") or 0), url=node.get("url"))

    def wait_bulk(self, operation_id: str, *, deadline: float, poll_seconds: float,
                  sleep: Callable[[float], None], waiting: Callable[[BulkStatus | None], None] = lambda _: None
                  ) -> BulkStatus:
        """Poll a bulk operation until it finishes (`waiting` hears each unfinished status, None while Shopify
        is briefly unreachable); past the `time.monotonic()` deadline, BulkTimedOut."""
        while True:
            try:
                status: BulkStatus | None = self.bulk_operation(operation_id)
            except ShopifyRetriable:
                status = None
            if status is not None and status.finished:
                return status
            waiting(status)
            if time.monotonic() > deadline:
                raise BulkTimedOut(f"the bulk operation {operation_id} did not finish in time")
            sleep(poll_seconds)

    def bulk_lines(self, url: str, *, skip: int = 0) -> Iterator[tuple[int, bytes]]:
        """(line number from 1, raw line) of a bulk file, streamed: never held whole. The first `skip` lines
        are read past (a resumed backfill has them). A line cut off by a broken download is still yielded,
        without its newline, for the caller to refuse."""
        try:
            with self.http.stream("GET", url, timeout=httpx.Timeout(60.0, connect=10.0)) as response:
                if response.status_code in (403, 404, 410):
                    raise BulkFileGone(f"the bulk file is no longer there (HTTP {response.status_code})")
                if response.status_code != 200:
                    raise ShopifyRetriable(f"downloading the bulk file: HTTP {response.status_code}")
                number, pending = 0, b""
                for chunk in response.iter_bytes():
                    pending += chunk
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        number += 1
                        if number > skip:
                            yield number, line + b"\n"
                if pending:
                    number += 1
                    if number > skip:
                        yield number, pending
        except httpx.TransportError as exc:
            raise ShopifyRetriable(f"downloading the bulk file: {type(exc).__name__}: {exc}") from None


class BulkFileGone(ShopifyError):
    """The file's URL expired (Shopify keeps it 7 days): the query must run again."""


def _wait(state: RetryCallState) -> float:
    exc = state.outcome.exception() if state.outcome else None
    hinted = exc.retry_after if isinstance(exc, ShopifyRetriable) else None
    # Brief: a longer outage is the caller's to schedule (the work waits in its table, the worker moves on).
    return min(hinted if hinted is not None else 0.25 * 2.0 ** state.attempt_number, 5.0)


class ShopifyClient(_BulkQueries):
    def __init__(self, shop_domain: str, access_token: str, *, api_version: str, admin_url: str | None = None,
                 http: httpx.Client | None = None, budget: CostBudget | None = None,
                 sleep: Callable[[float], None] = time.sleep,
                 refresh_token: Callable[[str], str | None] | None = None) -> None:
        """`refresh_token`, given the refused token, returns a fresh one (an expiring offline token renewed) or
        None; a refused token is then replaced once and the query sent again before the shop is paused."""
        base = admin_url or f"https://{shop_domain}"
        self.url = f"{base}/admin/api/{api_version}/graphql.json"
        self.shop_domain = shop_domain
        self.headers = {"X-Shopify-Access-Token": access_token, "Content-Type": "application/json",
                        "X-Shopify-Shop-Domain": shop_domain}
        self.http = http or httpx.Client(timeout=30.0)
        self.budget = budget or CostBudget()
        self.sleep = sleep
        self.refresh_token = refresh_token

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None, *, cost: float = 10.0
                ) -> dict[str, Any]:
        """`data` of one query; retried while Shopify says to wait, raised as a classified error otherwise."""
        # Through a `Retrying`, not tenacity's `retry` decorator, whose function refers to itself: each call
        # would be garbage for the cyclic collector to find (see `connector.brevo.paced`).
        retrying = Retrying(retry=retry_if_exception_type(ShopifyRetriable), stop=stop_after_attempt(3), wait=_wait,
                            sleep=self.sleep, reraise=True)
        try:
            return retrying(self._once, query, variables, cost)
        except ShopifyAuthFailed:
            refused = self.headers["X-Shopify-Access-Token"]
            fresh = self.refresh_token(refused) if self.refresh_token else None
            if not fresh or fresh == refused:
                raise
            self.headers["X-Shopify-Access-Token"] = fresh
            return retrying(self._once, query, variables, cost)

    def _once(self, query: str, variables: Mapping[str, Any] | None, cost: float) -> dict[str, Any]:
        pause = self.budget.wait_for(cost, time.monotonic())
        if pause > 0:
            self.sleep(pause)
        try:
            response = self.http.post(self.url, headers=self.headers,
                                      json={"query": query, "variables": dict(variables or {})})
        except httpx.TransportError as exc:
            raise ShopifyRetriable(f"Shopify unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code in (401, 403):
            raise ShopifyAuthFailed(f"Shopify refused the access token of {self.shop_domain} "
                                    f"(HTTP {response.status_code}): reinstall or renew the token")
        if response.status_code == 429 or response.status_code >= 500:
            after = response.headers.get("Retry-After")
            raise ShopifyRetriable(f"Shopify answered HTTP {response.status_code}",
                                   float(after) if after and after.replace(".", "", 1).isdigit() else None)
        if response.status_code != 200:
            raise ShopifyRejected(f"Shopify answered HTTP {response.status_code}: {response.text[:300]}")
        try:
            body = response.json()
        except ValueError:
            raise ShopifyRetriable("Shopify answered with a body that is not JSON") from None
        self.budget.update(body.get("extensions"), time.monotonic())
        errors = body.get("errors") or []
        if errors:
            codes = tuple(str((e.get("extensions") or {}).get("code", "")) for e in errors if isinstance(e, dict))
            if "THROTTLED" in codes:
                raise ShopifyRetriable("Shopify throttled the query", self.budget.wait_for(cost, time.monotonic()))
            if "ACCESS_DENIED" in codes:
                raise ShopifyAuthFailed(f"Shopify denied access for {self.shop_domain}: {errors[0].get('message')}")
            raise ShopifyRejected("; ".join(str(e.get("message", e)) for e in errors)[:500], codes)
        data = body.get("data")
        if not isinstance(data, dict):
            raise ShopifyRejected("Shopify answered without data")
        return data

    # --- pages of a resource (reconciliation polls) ----------------------------------------------------

    def page(self, resource: Resource, search: str, after: str | None = None) -> Page:
        """The objects matching a search (`updated_at:>='…'`), oldest change first where Shopify can sort so."""
        data = self.graphql(resource.page_query(), {"first": resource.page_size, "after": after, "query": search},
                            cost=resource.page_cost)
        connection = data.get(resource.root)
        if not isinstance(connection, dict):
            raise ShopifyRejected(f"Shopify answered without {resource.root}")
        info = connection.get("pageInfo") or {}
        objects = [resource.split(edge["node"]) for edge in connection.get("edges") or []
                   if isinstance(edge, dict) and isinstance(edge.get("node"), dict)]
        return Page(objects=objects, end_cursor=info.get("endCursor"), has_next=bool(info.get("hasNextPage")))

    def granted_scopes(self) -> set[str]:
        """The access scopes the merchant granted the app (`read_all_orders` decides how far back orders go)."""
        data = self.graphql("query scopes { currentAppInstallation { accessScopes { handle } } }", cost=1)
        installation = data.get("currentAppInstallation") or {}
        return {str(s.get("handle")) for s in installation.get("accessScopes") or [] if isinstance(s, dict)}

    def count(self, resource: Resource) -> int | None:
        """How many objects Shopify holds of a resource (None where it has no count, or caps it)."""
        field = f"{resource.root}Count"  # Shopify names each count after its connection
        data = self.graphql(f"query counts {{ {field}(limit: null) {{ count precision }} }}", cost=1)
        found = data.get(field)
        if not isinstance(found, dict) or found.get("precision") not in (None, "EXACT"):
            return None
        return int(found.get("count") or 0)

    # --- webhook subscriptions (custom-app installs) ----------------------------------------------------

    def webhook_subscriptions(self) -> list[Subscription]:
        """Every webhook subscription the app holds on the shop, page by page."""
        found: list[Subscription] = []
        after: str | None = None
        while True:
            data = self.graphql(SUBSCRIPTIONS, {"first": 100, "after": after}, cost=12)
            connection = data.get("webhookSubscriptions") or {}
            for edge in connection.get("edges") or []:
                node = edge.get("node") or {}
                found.append(Subscription(id=str(node.get("id")), topic=str(node.get("topic")),
                                          uri=str(node.get("uri") or "")))
            info = connection.get("pageInfo") or {}
            if not info.get("hasNextPage") or not info.get("endCursor"):
                return found
            after = str(info["endCursor"])

    def create_webhook_subscription(self, topic: str, uri: str) -> str:
        """Subscribe `uri` to a topic (its GraphQL name, ORDERS_CREATE); returns the subscription's id."""
        data = self.graphql(SUBSCRIBE, {"topic": topic, "webhookSubscription": {"uri": uri, "format": "JSON"}},
                            cost=10)
        payload = data.get("webhookSubscriptionCreate") or {}
        errors = payload.get("userErrors") or []
        if errors:
            raise ShopifyRejected("; ".join(str(e.get("message")) for e in errors))
        created = payload.get("webhookSubscription") or {}
        return str(created.get("id"))

    # --- marketing consent (two-way consent) -------------------------------------------------------------

    def update_marketing_consent(self, customer_id: int, *, channel: str, state: str, at: str) -> None:
        """Set a customer's email or SMS marketing state (UNSUBSCRIBED) as of `at` (ISO 8601)."""
        field, mutation = (("emailMarketingConsent", EMAIL_CONSENT) if channel == "email"
                           else ("smsMarketingConsent", SMS_CONSENT))
        data = self.graphql(mutation, {"input": {"customerId": customer_gid(customer_id),
                                                 field: {"marketingState": state, "consentUpdatedAt": at}}})
        payload = next(iter(data.values()), None) or {}
        errors = payload.get("userErrors") or []
        if errors:
            raise ShopifyRejected("; ".join(str(e.get("message")) for e in errors),
                                  tuple(str(e.get("code")) for e in errors))

    # --- discount codes (loyalty rewards) ------------------------------------------------------------

    def create_discount_code(self, *, code: str, title: str, amount: Decimal, customer_id: int | None,
                             starts_at: str) -> str:
        """A one-time fixed-amount code for one customer (or for anyone with the code, for a guest);
        returns its discount id. A code that exists already is found and returned (a retry after a crash)."""
        context: dict[str, Any] = ({"customers": {"add": [customer_gid(customer_id)]}} if customer_id
                                   else {"all": "ALL"})
        data = self.graphql(DISCOUNT_CODE_CREATE, {"basicCodeDiscount": {
            "title": title, "code": code, "startsAt": starts_at, "context": context, "usageLimit": 1,
            "appliesOncePerCustomer": True,
            "customerGets": {"value": {"discountAmount": {"amount": str(amount.quantize(CENT)),
                                                                "appliesOnEachItem": False}},
                             "items": {"all": True}}}})
        payload = data.get("discountCodeBasicCreate") or {}
        errors = payload.get("userErrors") or []
        if errors:
            if any(str(e.get("code")) == "TAKEN" or "must be unique" in str(e.get("message", "")) for e in errors):
                found = self.find_discount_code(code)
                if found:
                    return found
            raise ShopifyRejected("; ".join(f"{'.'.join(e.get('field') or [])}: {e.get('message')}" for e in errors),
                                  tuple(str(e.get("code")) for e in errors))
        node = payload.get("codeDiscountNode") or {}
        if not node.get("id"):
            raise ShopifyRejected("Shopify created no discount and gave no reason")
        return str(node["id"])

    def find_discount_code(self, code: str) -> str | None:
        data = self.graphql(DISCOUNT_CODE_FIND, {"code": code}, cost=2)
        node = data.get("codeDiscountNodeByCode")
        return str(node["id"]) if isinstance(node, dict) and node.get("id") else None


BULK_RUN = """
mutation bulkOperationRunQuery($query: String!) {
  bulkOperationRunQuery(query: $query) {
    bulkOperation { id status }
    userErrors { field code message }
  }
}
"""

EMAIL_CONSENT = """
mutation emailConsent($input: CustomerEmailMarketingConsentUpdateInput!) {
  customerEmailMarketingConsentUpdate(input: $input) {
    customer { id }
    userErrors { field message code }
  }
}"""

SMS_CONSENT = """
mutation smsConsent($input: CustomerSmsMarketingConsentUpdateInput!) {
  customerSmsMarketingConsentUpdate(input: $input) {
    customer { id }
    userErrors { field message code }
  }
}"""

SUBSCRIPTIONS = """
query subscriptions($first: Int!, $after: String) {
  webhookSubscriptions(first: $first, after: $after) {
    edges { node { id topic uri } }
    pageInfo { hasNextPage endCursor }
  }
}"""

SUBSCRIBE = """
mutation subscribe($topic: WebhookSubscriptionTopic!, $webhookSubscription: WebhookSubscriptionInput!) {
  webhookSubscriptionCreate(topic: $topic, webhookSubscription: $webhookSubscription) {
    webhookSubscription { id topic uri }
    userErrors { field message }
  }
}"""

BULK_STATUS = """
query bulkOperation($id: ID!) {
  node(id: $id) {
    ... on BulkOperation { id status errorCode objectCount rootObjectCount url partialDataUrl }
  }
}
"""

DISCOUNT_CODE_CREATE = """
mutation discountCodeBasicCreate($basicCodeDiscount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $basicCodeDiscount) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}
"""

DISCOUNT_CODE_FIND = """
query codeDiscountNodeByCode($code: String!) {
  codeDiscountNodeByCode(code: $code) { id }
}
"""
