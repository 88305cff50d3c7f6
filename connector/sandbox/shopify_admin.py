"""A simulated Shopify Admin GraphQL API: the operations the connector calls, with Shopify's cost throttling.

Served on loopback for tests and the demo (`SHOPIFY_ADMIN_URL` points the connector at it). Requests are
authenticated with `X-Shopify-Access-Token`; every answer carries `extensions.cost.throttleStatus` from a leaky
bucket (2,000 points, 100 restored per second, as on standard plans) and a query the bucket cannot pay for is
answered `THROTTLED`. Faults can be injected: the next calls answer a given HTTP status or are throttled.

Operations: `discountCodeBasicCreate` (codes unique per store, required fields checked as Shopify does) and
`codeDiscountNodeByCode`. Anything else is answered with a GraphQL error, as Shopify answers an unknown field.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

_OPERATION = re.compile(r"\b(discountCodeBasicCreate|codeDiscountNodeByCode)\s*\(")
_FIELD = re.compile(r"{\s*([A-Za-z_][A-Za-z0-9_]*)")
COSTS = {"discountCodeBasicCreate": 10, "codeDiscountNodeByCode": 2}


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
    bucket_size: float = 2000.0
    restore_rate: float = 100.0
    discounts: dict[str, Discount] = field(default_factory=dict)  # by code, upper-cased
    faults: deque[int | str] = field(default_factory=deque)  # next calls: an HTTP status, or "throttle"
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._available, self._at = self.bucket_size, time.monotonic()
        self._ids = itertools.count(1_000_001)
        self.app = Starlette(routes=[Route("/admin/api/{version}/graphql.json", self._graphql, methods=["POST"])])

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
            cost = COSTS[operation]
            self._restore()
            if fault == "throttle" or self._available < cost:
                return JSONResponse({"errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED"}}],
                                     "extensions": self._cost(cost, 0)})
            self._available -= cost
            self.calls.append(operation)
            data = self._create(variables) if operation == "discountCodeBasicCreate" else self._find(variables)
            return JSONResponse({"data": data, "extensions": self._cost(cost, cost)})

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
