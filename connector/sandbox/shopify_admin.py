"""A simulated Shopify Admin GraphQL API: the operations the connector calls, with Shopify's cost throttling.

Served on loopback for tests and the demo (`SHOPIFY_ADMIN_URL` points the connector at it). Requests are
authenticated with `X-Shopify-Access-Token`; every answer carries `extensions.cost.throttleStatus` from a leaky
bucket (2,000 points, 100 restored per second, as on standard plans) and a query the bucket cannot pay for is
answered `THROTTLED`. Faults can be injected: the next calls answer a given HTTP status or are throttled.

Operations: `discountCodeBasicCreate` (codes unique per store, required fields checked as Shopify does),
`codeDiscountNodeByCode`; pages of `customers`, `orders`, `products` and `abandonedCheckouts` (`first`/`after`,
`query` with `updated_at`/`created_at` bounds, `sortKey: UPDATED_AT`, nested rows inline; each page costs its
objects and rows, and is refused `THROTTLED` when the bucket cannot pay the requested cost) and their `*Count`
queries; and bulk queries over a simulated store's data: `bulkOperationRunQuery` (at most five
running per shop, as from API 2026-01), `node(id:)` for an operation's status, and the JSONL file at the
operation's `url` (a store that wrote its files in advance, `LargeStore`, has an operation over a whole connection
served from its file). Bulk faults: the next operation fails (`"fail"`) or the first download of its file breaks
off mid-line (`"truncate"`). Anything else is answered with a GraphQL error, as Shopify answers an unknown field.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import re
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import IO, Any
from urllib.parse import urlencode

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from connector.sandbox.shopify_bulk import BulkFile, Consents, count, page, write

_OPERATION = re.compile(r"\b(currentAppInstallation(?=\s*{)|(?:discountCodeBasicCreate|codeDiscountNodeByCode"
                        r"|webhookSubscriptionCreate|webhookSubscriptions"
                        r"|customerEmailMarketingConsentUpdate|customerSmsMarketingConsentUpdate"
                        r"|bulkOperationRunQuery|node|customersCount|ordersCount|productsCount"
                        r"|abandonedCheckoutsCount|customers|orders|products|abandonedCheckouts)(?=\s*\())")
_PAGE_ROOTS = ("customers", "orders", "products", "abandonedCheckouts")
_NESTED_FIRST = re.compile(r"\b(?:lineItems|collections)\(first:\s*(\d+)\)")
_FIELD = re.compile(r"{\s*([A-Za-z_][A-Za-z0-9_]*)")
_BULK_ROOT = re.compile(r"^\s*{\s*(customers|orders|products|abandonedCheckouts)\s*"
                        r"(?:\(\s*query:\s*\"([^\"]*)\"\s*\))?")
COSTS = {"currentAppInstallation": 1, "webhookSubscriptionCreate": 10, "customerEmailMarketingConsentUpdate": 10,
         "customerSmsMarketingConsentUpdate": 10,
         "discountCodeBasicCreate": 10, "codeDiscountNodeByCode": 2, "bulkOperationRunQuery": 10, "node": 1}
BULK_CONCURRENCY = 5
# Shopify's WebhookSubscriptionTopic values the sandbox accepts (a subset: the topics of shops' data and the app).
SUBSCRIBABLE = frozenset({
    "APP_UNINSTALLED", "BULK_OPERATIONS_FINISH", "CARTS_CREATE", "CARTS_UPDATE", "CHECKOUTS_CREATE",
    "CHECKOUTS_UPDATE", "CHECKOUTS_DELETE", "CUSTOMERS_CREATE", "CUSTOMERS_UPDATE", "CUSTOMERS_DELETE",
    "CUSTOMERS_EMAIL_MARKETING_CONSENT_UPDATE", "CUSTOMERS_MARKETING_CONSENT_UPDATE", "ORDERS_CREATE",
    "ORDERS_UPDATED", "ORDERS_PAID", "ORDERS_CANCELLED", "ORDERS_FULFILLED", "ORDERS_PARTIALLY_FULFILLED",
    "REFUNDS_CREATE", "PRODUCTS_CREATE", "PRODUCTS_UPDATE", "PRODUCTS_DELETE"})


@dataclass
class BulkOperation:
    id: str
    root: str
    search: str | None
    ready_at: float  # monotonic: RUNNING until then
    nested: bool = True  # the query asks for a nested connection: its rows are in the file
    failed: bool = False
    truncated: bool = False
    objects: int | None = None
    roots: int | None = None
    path: str | None = None  # the file, once written (Shopify writes it while the operation runs)


@dataclass
class Discount:
    id: str
    code: str
    title: str
    amount: str
    customers: tuple[str, ...]  # customer GIDs; empty: anyone with the code
    usage_limit: int | None
    starts_at: str


@dataclass
class ShopifyAdminSandbox:
    tokens: set[str] = field(default_factory=lambda: {"sandbox-admin-token"})
    # What the merchant granted; without read_all_orders, orders older than 60 days are not shown.
    scopes: set[str] = field(default_factory=lambda: {"read_customers", "read_orders", "read_all_orders",
                                                      "read_products", "write_discounts"})
    bucket_size: float = 2000.0
    restore_rate: float = 100.0
    discounts: dict[str, Discount] = field(default_factory=dict)  # by code, upper-cased
    faults: deque[int | str] = field(default_factory=deque)  # next calls: an HTTP status, or "throttle"
    store: Any = None  # a SimulatedStore or LargeStore (customers, orders, products, checkouts, deliveries())
    bulk_seconds: float = 0.3  # how long a bulk query runs
    bulk_faults: deque[str] = field(default_factory=deque)  # next bulk operations: "fail" or "truncate"
    operations: dict[str, BulkOperation] = field(default_factory=dict)
    subscriptions: dict[str, dict[str, str]] = field(default_factory=dict)  # by id: topic, uri, format
    consent_updates: list[dict[str, Any]] = field(default_factory=list)  # customerId, channel, state, at
    # The public app's credentials, for /admin/oauth/access_token (token exchange and refresh); None: no app.
    client_id: str | None = None
    client_secret: str | None = None
    token_seconds: int = 3600  # how long an expiring access token lasts
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # unused refresh token -> its access token
    refreshes: int = 0
    client_grants: int = 0
    codes: dict[str, str] = field(default_factory=dict)  # unused authorization codes -> their shop
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._available, self._at = self.bucket_size, time.monotonic()
        self._ids = itertools.count(1_000_001)
        self._consents: Consents | None = None
        self._bulk_base = ""  # this server's own address, for the files' URLs (known from the first request)
        self._files = tempfile.TemporaryDirectory(prefix="shopify-bulk-")  # removed with this object
        self.app = Starlette(routes=[Route("/admin/api/{version}/graphql.json", self._graphql, methods=["POST"]),
                                     Route("/admin/oauth/access_token", self._access_token, methods=["POST"]),
                                     Route("/admin/oauth/authorize", self._authorize, methods=["GET"]),
                                     Route("/bulk/{number}.jsonl", self._bulk_file, methods=["GET"])])

    # --- HTTP -------------------------------------------------------------------------------------

    async def _graphql(self, request: Request) -> Response:
        if request.headers.get("x-shopify-access-token") not in self.tokens:
            return JSONResponse({"errors": "[API] Invalid API key or access token (unrecognized login or wrong "
                                           "password)"}, status_code=401)
        try:
            body = json.loads(await request.body())
            query, variables = str(body["query"]), body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"errors": [{"message": "Invalid JSON or missing query"}]}, status_code=400)
        with self.lock:
            fault = self.faults.popleft() if self.faults else None
            if isinstance(fault, int):
                return JSONResponse({"errors": "Internal error"} if fault >= 500 else {"errors": "Refused"},
                                    status_code=fault)
            match = _OPERATION.search(query)
            if match is None:
                name = (_FIELD.findall(query) or ["(none)"])[-1]
                return JSONResponse({"errors": [{"message": f"Field '{name}' doesn't exist on type 'QueryRoot'",
                                                 "extensions": {"code": "undefinedField"}}]})
            operation = match.group(1)
            cost = self._requested(operation, query, variables)
            self._restore()
            if fault == "throttle" or self._available < cost:
                return JSONResponse({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                                     "extensions": self._cost(cost, 0)})
            self.calls.append(operation)
            if operation in _PAGE_ROOTS or operation.endswith("Count"):
                try:
                    data, actual = self._read(operation, query, variables)
                except ValueError as exc:
                    return JSONResponse({"errors": [{"message": str(exc), "extensions": {"code": "badRequest"}}]})
                self._available -= actual
                return JSONResponse({"data": data, "extensions": self._cost(cost, actual)})
            self._available -= cost
            if operation == "currentAppInstallation":
                data = {"currentAppInstallation": {"accessScopes": [{"handle": h} for h in sorted(self.scopes)]}}
            elif operation == "bulkOperationRunQuery":
                data = self._run_bulk(variables, str(request.base_url).rstrip("/"))
            elif operation == "node":
                data = self._node(variables)
            elif operation.endswith("MarketingConsentUpdate"):
                data = self._consent(operation, variables)
            elif operation == "webhookSubscriptions":
                data = self._subscriptions(variables)
            elif operation == "webhookSubscriptionCreate":
                created = self._subscribe(variables)
                if created is None:
                    message = (f"Variable $topic of type WebhookSubscriptionTopic! was provided invalid value "
                               f"{variables.get('topic')!r}")
                    return JSONResponse({"errors": [{"message": message,
                                                     "extensions": {"code": "INVALID_VARIABLE"}}]})
                data = created
            else:
                data = self._create(variables) if operation == "discountCodeBasicCreate" else self._find(variables)
            return JSONResponse({"data": data, "extensions": self._cost(cost, cost)})

    @staticmethod
    def _requested(operation: str, query: str, variables: dict[str, Any]) -> int:
        """Shopify's requested cost: a page costs one point per object it may return and per nested row."""
        if operation not in _PAGE_ROOTS:
            return COSTS.get(operation, 1)
        nested = _NESTED_FIRST.search(query)
        return int(variables.get("first") or 1) * (1 + (int(nested.group(1)) if nested else 0)) + 1

    def _read(self, operation: str, query: str, variables: dict[str, Any]) -> tuple[dict[str, Any], int]:
        search = variables.get("query")
        if operation.endswith("Count"):
            root = operation.removesuffix("Count")
            return {operation: {"count": count(root, self._objects(root), search), "precision": "EXACT"}}, 1
        first = int(variables.get("first") or 0)
        if not 0 < first <= 250:
            raise ValueError("first must be between 1 and 250")
        connection, size = page(operation, self._objects(operation), search, self._consent_state(), first=first,
                                after=variables.get("after"), by_updated="sortKey: UPDATED_AT" in query)
        return {operation: connection}, size + 1

    def _objects(self, root: str) -> Any:
        if self.store is None:  # a shop with nothing in it yet
            return []
        if root == "orders" and "read_all_orders" not in self.scopes:
            since = datetime.now(UTC) - timedelta(days=60)
            return [o for o in self.store.orders
                    if datetime.fromisoformat(str(o["created_at"]).replace("Z", "+00:00")) >= since]
        return {"customers": self.store.customers, "orders": self.store.orders, "products": self.store.products,
                "abandonedCheckouts": self.store.checkouts}[root]

    def _consent_state(self) -> Consents:
        if self.store is None:
            return Consents()
        if self._consents is None:
            self._consents = Consents.from_deliveries(self.store.deliveries())
        return self._consents

    def _restore(self) -> None:
        now = time.monotonic()
        self._available = min(self.bucket_size, self._available + (now - self._at) * self.restore_rate)
        self._at = now

    def _cost(self, requested: int, actual: int) -> dict[str, Any]:
        return {"cost": {"requestedQueryCost": requested, "actualQueryCost": actual, "throttleStatus": {
            "maximumAvailable": self.bucket_size, "currentlyAvailable": round(self._available, 1),
            "restoreRate": self.restore_rate}}}

    # --- operations -------------------------------------------------------------------------------

    def _create(self, variables: dict[str, Any]) -> dict[str, Any]:
        data = variables.get("basicCodeDiscount") or {}
        errors = [{"field": ["basicCodeDiscount", name], "code": "BLANK", "message": f"{name} can't be blank"}
                  for name in ("title", "code", "startsAt", "customerGets") if not data.get(name)]
        if not (data.get("context") or data.get("customerSelection")):
            errors.append({"field": ["basicCodeDiscount", "context"], "code": "BLANK",
                           "message": "context can't be blank"})
        code = str(data.get("code") or "")
        if code and code.upper() in self.discounts:
            errors.append({"field": ["basicCodeDiscount", "code"], "code": "TAKEN",
                           "message": "Code must be unique. Please try a different code."})
        amount = (((data.get("customerGets") or {}).get("value") or {}).get("discountAmount") or {}).get("amount")
        if data.get("customerGets") and amount is None:
            errors.append({"field": ["basicCodeDiscount", "customerGets", "value"], "code": "INVALID",
                           "message": "Value must be a percentage or an amount"})
        if errors:
            return {"discountCodeBasicCreate": {"codeDiscountNode": None, "userErrors": errors}}
        context = data.get("context") or {}
        discount = Discount(id=f"gid://shopify/DiscountCodeNode/{next(self._ids)}", code=code,
                            title=str(data["title"]), amount=str(amount),
                            customers=tuple((context.get("customers") or {}).get("add") or ()),
                            usage_limit=data.get("usageLimit"), starts_at=str(data["startsAt"]))
        self.discounts[code.upper()] = discount
        return {"discountCodeBasicCreate": {"codeDiscountNode": {"id": discount.id}, "userErrors": []}}

    def _find(self, variables: dict[str, Any]) -> dict[str, Any]:
        found = self.discounts.get(str(variables.get("code") or "").upper())
        return {"codeDiscountNodeByCode": {"id": found.id} if found else None}

    # --- OAuth: token exchange and refresh ------------------------------------------------------------------

    async def _access_token(self, request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        if not self.client_id or body.get("client_id") != self.client_id \
                or body.get("client_secret") != self.client_secret:
            return JSONResponse({"error": "invalid_client", "error_description": "Client authentication failed"},
                                status_code=401)
        grant = body.get("grant_type")
        with self.lock:
            if grant is None and "code" in body:  # the authorization-code grant
                if self.codes.pop(str(body["code"]), None) is None:
                    used = "The authorization code was not found or was already used"
                    return JSONResponse({"error": "invalid_request", "error_description": used}, status_code=400)
                return JSONResponse(self._issue(expiring=bool(body.get("expiring"))))
            if grant == "urn:ietf:params:oauth:grant-type:token-exchange":
                try:
                    jwt.decode(str(body.get("subject_token")), str(self.client_secret), algorithms=["HS256"],
                               audience=self.client_id)
                except jwt.PyJWTError as exc:
                    return JSONResponse({"error": "invalid_subject_token", "error_description": str(exc)},
                                        status_code=400)
                return JSONResponse(self._issue(expiring=bool(body.get("expiring"))))
            if grant == "client_credentials":
                self.client_grants += 1
                return JSONResponse({**self._issue(expiring=False), "expires_in": 86399})
            if grant == "refresh_token":
                if str(body.get("refresh_token")) not in self.refresh_tokens:
                    return JSONResponse({"error": "invalid_grant",
                                         "error_description": "refresh token is invalid or was used"}, status_code=400)
                del self.refresh_tokens[str(body["refresh_token"])]
                self.refreshes += 1
                return JSONResponse(self._issue(expiring=True))
        return JSONResponse({"error": "unsupported_grant_type"}, status_code=400)

    async def _authorize(self, request: Request) -> Response:
        """The merchant approves the app at once: back to the app's redirect_uri with a code, signed as Shopify
        signs it (hex HMAC-SHA256 of the sorted query with the app's secret). The shop is the Host asked for."""
        query = request.query_params
        if not self.client_id or query.get("client_id") != self.client_id or not query.get("redirect_uri"):
            return JSONResponse({"error": "invalid_request"}, status_code=400)
        shop = request.headers.get("host", "").split(":")[0]
        code = f"code_{next(self._ids)}"
        with self.lock:
            self.codes[code] = shop
        params = {"code": code, "host": "c2FuZGJveA", "shop": shop, "state": query.get("state", ""),
                  "timestamp": str(int(time.time()))}
        message = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        params["hmac"] = hmac.new(str(self.client_secret).encode(), message.encode(), hashlib.sha256).hexdigest()
        return Response(status_code=302, headers={"location": f"{query['redirect_uri']}?{urlencode(params)}"})

    def _issue(self, *, expiring: bool) -> dict[str, Any]:
        number = next(self._ids)
        token = f"shpat_sandbox_{number}"
        self.tokens.add(token)
        issued: dict[str, Any] = {"access_token": token, "scope": ",".join(sorted(self.scopes))}
        if expiring:
            refresh = f"shprt_sandbox_{number}"
            self.refresh_tokens[refresh] = token
            issued.update(expires_in=self.token_seconds, refresh_token=refresh, refresh_token_expires_in=7_776_000)
        return issued

    # --- marketing consent -------------------------------------------------------------------------------

    def _consent(self, operation: str, variables: dict[str, Any]) -> dict[str, Any]:
        data = variables.get("input") or {}
        channel = "email" if operation.startswith("customerEmail") else "sms"
        consent = data.get("emailMarketingConsent" if channel == "email" else "smsMarketingConsent") or {}
        state = consent.get("marketingState")
        if state not in ("SUBSCRIBED", "UNSUBSCRIBED", "NOT_SUBSCRIBED", "PENDING"):
            return {operation: {"customer": None, "userErrors": [
                {"field": ["input", "marketingState"], "code": "INVALID", "message": f"Invalid state {state!r}"}]}}
        self.consent_updates.append({"customerId": data.get("customerId"), "channel": channel, "state": state,
                                     "at": consent.get("consentUpdatedAt")})
        return {operation: {"customer": {"id": data.get("customerId")}, "userErrors": []}}

    # --- webhook subscriptions -----------------------------------------------------------------------

    def _subscriptions(self, variables: dict[str, Any]) -> dict[str, Any]:
        ordered = sorted(self.subscriptions.items(), key=lambda item: int(item[0].rsplit("/", 1)[-1]))
        after = str(variables.get("after") or "")
        start = next((i + 1 for i, (key, _) in enumerate(ordered) if key == after), 0)
        first = int(variables.get("first") or 50)
        chunk = ordered[start:start + first]
        return {"webhookSubscriptions": {
            "edges": [{"cursor": key, "node": {"id": key, **sub}} for key, sub in chunk],
            "pageInfo": {"hasNextPage": start + first < len(ordered), "endCursor": chunk[-1][0] if chunk else None}}}

    def _subscribe(self, variables: dict[str, Any]) -> dict[str, Any] | None:
        """None for a topic outside Shopify's WebhookSubscriptionTopic enum (the compliance topics are not in
        it: those are declared in the app's configuration)."""
        topic = str(variables.get("topic") or "")
        if topic not in SUBSCRIBABLE:
            return None
        uri = str((variables.get("webhookSubscription") or {}).get("uri") or "")
        errors = []
        if not uri.startswith("https://"):
            errors.append({"field": ["webhookSubscription", "callbackUrl"],
                           "message": f"Address protocol {uri.split(':', 1)[0]}:// is not supported"})
        elif any(s["topic"] == topic and s["uri"] == uri for s in self.subscriptions.values()):
            errors.append({"field": ["webhookSubscription", "callbackUrl"],
                           "message": "Address for this topic has already been taken"})
        if errors:
            return {"webhookSubscriptionCreate": {"webhookSubscription": None, "userErrors": errors}}
        key = f"gid://shopify/WebhookSubscription/{next(self._ids)}"
        self.subscriptions[key] = {"topic": topic, "uri": uri, "format": "JSON"}
        return {"webhookSubscriptionCreate": {"webhookSubscription": {"id": key, "topic": topic, "uri": uri},
                                              "userErrors": []}}

    # --- bulk operations ------------------------------------------------------------------------------

    def _run_bulk(self, variables: dict[str, Any], base: str) -> dict[str, Any]:
        match = _BULK_ROOT.match(str(variables.get("query") or ""))
        if match is None or self.store is None:
            return {"bulkOperationRunQuery": {"bulkOperation": None, "userErrors": [
                {"field": ["query"], "code": "INVALID", "message": "Invalid bulk query: a connection field ("
                 "customers, orders, products, abandonedCheckouts) is required"}]}}
        now = time.monotonic()
        running = [op for op in self.operations.values()
                   if not op.failed and (op.ready_at > now or op.path is None)]  # RUNNING until its file is written
        if len(running) >= BULK_CONCURRENCY:
            return {"bulkOperationRunQuery": {"bulkOperation": None, "userErrors": [
                {"field": None, "code": "LIMIT_REACHED",
                 "message": f"A shop can run {BULK_CONCURRENCY} bulk query operations at a time"}]}}
        fault = self.bulk_faults.popleft() if self.bulk_faults else None
        number = next(self._ids)
        query = str(variables.get("query") or "")
        op = BulkOperation(id=f"gid://shopify/BulkOperation/{number}", root=match.group(1), search=match.group(2),
                           nested=bool(re.search(r"\b(lineItems|collections)\b", query)),
                           ready_at=now + self.bulk_seconds, failed=fault == "fail", truncated=fault == "truncate")
        self.operations[op.id] = op
        self._bulk_base = base
        self.calls.append(f"bulk:{op.root}")
        ready = self._prepared(op) if not op.failed else None
        if ready is not None:  # the store wrote this file in advance: ready once the operation has run
            op.objects, op.roots, op.path = ready.objects, ready.roots, ready.path
        elif not op.failed:  # the file is written in the background, as Shopify's servers do; RUNNING until then
            threading.Thread(target=self._write_file, args=(op, self._consent_state()), daemon=True).start()
        return {"bulkOperationRunQuery": {"bulkOperation": {"id": op.id, "status": "CREATED"}, "userErrors": []}}

    def _node(self, variables: dict[str, Any]) -> dict[str, Any]:
        op = self.operations.get(str(variables.get("id")))
        if op is None:
            return {"node": None}
        done = time.monotonic() >= op.ready_at and (op.failed or op.path is not None)
        status = "RUNNING" if not done else ("FAILED" if op.failed else "COMPLETED")
        number = op.id.rsplit("/", 1)[-1]
        return {"node": {"id": op.id, "status": status, "errorCode": "INTERNAL_SERVER_ERROR" if op.failed and done
                         else None, "objectCount": str(op.objects or 0), "rootObjectCount": str(op.roots or 0),
                         "url": f"{self._bulk_base}/bulk/{number}.jsonl" if status == "COMPLETED" and op.objects
                         else None, "partialDataUrl": None}}

    def _prepared(self, op: BulkOperation) -> BulkFile | None:
        """The store's own file for this operation, when it prepared one (`LargeStore.bulk_file`)."""
        prepared = getattr(self.store, "bulk_file", None)
        if prepared is None or (op.root == "orders" and "read_all_orders" not in self.scopes):
            return None
        found: BulkFile | None = prepared(op.root, op.search, op.nested)
        return found

    def _write_file(self, op: BulkOperation, consents: Consents) -> None:
        """The operation's JSONL file, written to the sandbox's folder with its object counts."""
        try:
            with tempfile.NamedTemporaryFile("wb", dir=self._files.name, suffix=".jsonl", delete=False) as out:
                objects, roots = write(op.root, self._objects(op.root), op.search, consents, out, nested=op.nested)
            op.objects, op.roots, op.path = objects, roots, out.name
        except Exception:  # the operation fails, as Shopify's do when something goes wrong on their side
            op.failed = True
            raise

    async def _bulk_file(self, request: Request) -> Response:
        op = self.operations.get(f"gid://shopify/BulkOperation/{request.path_params['number']}")
        if op is None or op.failed or op.path is None or time.monotonic() < op.ready_at:
            return Response("Not found", status_code=404)
        cut = op.truncated  # this download breaks off; the next one is whole
        op.truncated = False
        return StreamingResponse(_read_file(op.path, cut_short=cut), media_type="application/jsonl")


def _read_file(path: str, *, cut_short: bool) -> Iterator[bytes]:
    """The file in blocks; cut short: all but the last line, then half of the last line (a broken download).
    Never held whole: a large store's files run to gigabytes."""
    with open(path, "rb") as file:
        size = file.seek(0, 2)
        end = _last_line_start(file, size) if cut_short else size
        file.seek(0)
        left = end
        while left and (block := file.read(min(left, 1 << 16))):
            left -= len(block)
            yield block
        if cut_short and size:
            yield file.read((size - end) // 2)


def _last_line_start(file: IO[bytes], size: int) -> int:
    """Where the file's last line starts: just after the newline before its final byte."""
    position = max(size - 1, 0)
    while position:
        step = min(position, 1 << 16)
        file.seek(position - step)
        found = file.read(step).rfind(b"\n")
        if found >= 0:
            return position - step + found + 1
        position -= step
    return 0
