"""Simulate the Brevo v3 REST API in-process, so tests, demos and benchmarks talk real HTTP to a fake Brevo.

Request bodies are validated against Brevo's own OpenAPI document (vendored next to this file, see
PROVENANCE.md); rate limits, status codes and error bodies follow Brevo's documentation. Faults (5xx, 429,
stalls, partial batch failures) can be injected from Python or over HTTP through the ``/_sandbox/*``
control routes, which need no API key.

Where Brevo documents nothing, the sandbox picks the stricter plausible behaviour and says so next to the
code: a connector that passes here should not be surprised by the real service.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import csv
import io
import itertools
import json
import math
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio.from_thread
import httpx
import jsonschema
import jsonschema.exceptions
import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from connector import jsontext

__all__ = [
    "API_PREFIX",
    "DEFAULT_API_KEY",
    "SPEC_FILE",
    "BrevoLimits",
    "BrevoSandbox",
    "CallRecord",
    "InProcessTransport",
    "rate_limit_family",
    "request_body_schema",
]

API_PREFIX = "/v3"
DEFAULT_API_KEY = "sandbox-brevo-key"
SPEC_FILE = Path(__file__).with_name("brevo-openapi.yaml")

# Brevo's documented size limits. Decimal megabytes and the raw request size (not just jsonBody) make the
# import check slightly stricter than Brevo's, which is the safe side for a client.
IMPORT_MAX_BYTES = 10 * 1000 * 1000
ORDERS_BATCH_MAX = 1000
PRODUCTS_BATCH_MAX = 100
CATEGORIES_BATCH_MAX = 100
PRODUCT_META_MAX_KEYS = 20
EVENT_PROPERTIES_MAX_BYTES = 50 * 1024
EVENT_NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,255}")
# Brevo documents no maximum for /events/batch; 1,000 mirrors the orders batch so a client sizing its
# batches to Brevo's other documented limits is never refused here.
EVENTS_BATCH_MAX = 1000
FAULT_MODES = ("status", "timeout", "partial")

# Attributes every Brevo account has; the identifier ones are kept on the contact record, not in attributes.
_STANDARD_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "EMAIL": {"category": "normal", "type": "text"},
    "FIRSTNAME": {"category": "normal", "type": "text"},
    "LASTNAME": {"category": "normal", "type": "text"},
    "SMS": {"category": "normal", "type": "text"},
    "WHATSAPP": {"category": "normal", "type": "text"},
    "LANDLINE_NUMBER": {"category": "normal", "type": "text"},
    "EXT_ID": {"category": "normal", "type": "text"},
}
# Attribute name -> identifier field of the contact record.
_IDENTIFIER_ATTRIBUTES = {"EMAIL": "email", "SMS": "sms", "EXT_ID": "ext_id"}
# How a duplicate identifier is named in `metadata.duplicate_identifiers` (Brevo shows "email"; the other
# spellings are unverified).
_IDENTIFIER_NAMES = {"email": "email", "ext_id": "ext_id", "sms": "sms"}
# `?identifierType=` of /contacts/{identifier} -> identifier field (None = the numeric contact id).
_IDENTIFIER_TYPES: dict[str, str | None] = {
    "email_id": "email",
    "ext_id": "ext_id",
    "phone_id": "sms",
    "contact_id": None,
    "whatsapp_id": "WHATSAPP",
    "landline_number_id": "LANDLINE_NUMBER",
}
_ATTRIBUTE_CATEGORIES = ("normal", "transactional", "category", "calculated", "global")
_DATE_VALUE = re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ][0-9:.+\-Z]*)?")

# Every JSON request body the sandbox checks against the spec, as (spec path, method).
_VALIDATED_BODIES = (
    ("/contacts", "post"),
    ("/contacts/{identifier}", "put"),
    ("/contacts/import", "post"),
    ("/contacts/attributes/{attributeCategory}/{attributeName}", "post"),
    ("/contacts/attributes/{attributeCategory}/{attributeName}", "put"),
    ("/contacts/folders", "post"),
    ("/contacts/lists", "post"),
    ("/contacts/lists/{listId}/contacts/add", "post"),
    ("/events", "post"),
    ("/orders/status", "post"),
    ("/orders/status/batch", "post"),
    ("/products", "post"),
    ("/products/batch", "post"),
    ("/categories/batch", "post"),
)


# --------------------------------------------------------------------------------------------------------
# The spec: loaded once per process, on first need, and turned into Draft 4 validators.
# --------------------------------------------------------------------------------------------------------

# OAS keywords that carry no validation meaning. `format` is dropped on purpose: the spec puts `format: email`
# on category ids and `format: string` on product names, which no validator could honour.
_ANNOTATIONS = frozenset(
    {
        "example",
        "examples",
        "description",
        "format",
        "xml",
        "externalDocs",
        "discriminator",
        "deprecated",
        "readOnly",
        "writeOnly",
        "title",
        "nullable",
    }
)
_SUBSCHEMA_KEYS = ("items", "additionalProperties", "not")
_SUBSCHEMA_LIST_KEYS = ("allOf", "anyOf", "oneOf")

_spec_lock = threading.Lock()
_validators: dict[tuple[str, str], jsonschema.Draft4Validator] = {}


def _pointer(document: Mapping[str, Any], ref: str) -> Any:
    if not ref.startswith("#/"):
        raise ValueError(f"only local $ref are supported, got {ref!r}")
    node: Any = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _require_sole_property(branch: Any) -> Any:
    # addContactToList's body is `oneOf` three objects ({emails}, {ids}, {extIds}) none of which lists its
    # property as required, so every valid body matches all three and `oneOf` fails. Requiring each
    # branch's only property restores the meaning the spec's examples show.
    if (
        isinstance(branch, dict)
        and "required" not in branch
        and isinstance(branch.get("properties"), dict)
        and len(branch["properties"]) == 1
    ):
        return {**branch, "required": list(branch["properties"])}
    return branch


def _json_schema(node: Any, document: Mapping[str, Any], seen: frozenset[str]) -> Any:
    """Turn an OAS 3.0 schema object into a self-contained Draft 4 JSON Schema ($refs inlined)."""
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        ref = node["$ref"]
        if ref in seen:
            return {}  # a recursive schema: accept anything below the loop rather than recurse forever
        return _json_schema(_pointer(document, ref), document, seen | {ref})
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS or key.startswith("x-"):
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _json_schema(sub, document, seen) for name, sub in value.items()}
        elif key in _SUBSCHEMA_KEYS:
            out[key] = _json_schema(value, document, seen)
        elif key in _SUBSCHEMA_LIST_KEYS and isinstance(value, list):
            out[key] = [_json_schema(sub, document, seen) for sub in value]
        else:
            out[key] = value
    if node.get("nullable") is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list):
            out["enum"] = [*out["enum"], None]
    if "oneOf" in out:
        out["oneOf"] = [_require_sole_property(branch) for branch in out["oneOf"]]
    return out


def _widen_event_properties(schema: dict[str, Any]) -> None:
    # The spec types event_properties values as string|integer|object|array, yet its own description
    # ("string, number, boolean, date") and its own example (`autoplayed: false`, a boolean) contradict that,
    # as does the developer documentation. Validating the letter of the schema would refuse prices and flags
    # that Brevo accepts, so numbers and booleans are allowed too. This is the only place the sandbox is
    # looser than the spec.
    values = schema.get("properties", {}).get("event_properties", {}).get("additionalProperties", {})
    if isinstance(values.get("anyOf"), list):
        values["anyOf"] = [*values["anyOf"], {"type": "number"}, {"type": "boolean"}]


def _build_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C loader reads the 1 MB spec ~10x faster
    with SPEC_FILE.open("rb") as handle:
        document = yaml.load(handle, Loader=loader)
    built: dict[tuple[str, str], jsonschema.Draft4Validator] = {}
    for path, method in _VALIDATED_BODIES:
        body = document["paths"][path][method]["requestBody"]
        if "$ref" in body:
            body = _pointer(document, body["$ref"])
        schema = _json_schema(body["content"]["application/json"]["schema"], document, frozenset())
        if (path, method) == ("/events", "post"):
            _widen_event_properties(schema)
        built[(path, method)] = jsonschema.Draft4Validator(schema)
    return built


def _body_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    with _spec_lock:
        if not _validators:
            _validators.update(_build_validators())
        return _validators


def request_body_schema(path: str, method: str) -> dict[str, Any]:
    """The JSON Schema (Draft 4, $refs inlined) the sandbox applies to the body of ``method path``.

    ``path`` is the spec's path without the /v3 prefix, e.g. ``request_body_schema("/events", "post")``.
    """
    schema: dict[str, Any] = _body_validators()[(path, method.lower())].schema
    return schema


def _schema_problem(validator: jsonschema.Draft4Validator, instance: Any, prefix: str = "") -> str | None:
    error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = prefix + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"{where.lstrip('.') or 'body'}: {error.message}"


# --------------------------------------------------------------------------------------------------------
# Public value types.
# --------------------------------------------------------------------------------------------------------


@dataclass
class BrevoLimits:
    """(requests, window_seconds) per rate-limit family; the defaults are Brevo's base ("General") tier."""

    contacts: tuple[int, float] = (10, 1.0)  # every /v3/contacts/* path, /contacts/import included
    events: tuple[int, float] = (10, 1.0)  # POST /v3/events
    orders: tuple[int, float] = (5, 1.0)  # POST /v3/orders/status
    products: tuple[int, float] = (2, 1.0)  # POST /v3/products (single)
    # Everything else, the batch endpoints included: Brevo lists no own limit for /events/batch,
    # /orders/status/batch, /products/batch or /categories/batch, so they fall in "all other endpoints".
    other: tuple[int, float] = (100, 3600.0)


@dataclass(frozen=True)
class CallRecord:
    """One request the sandbox answered (control routes excluded). `at` is time.time()."""

    method: str
    path: str
    status: int  # 499 = the client gave up before the answer (timeout faults)
    family: str
    at: float


def rate_limit_family(method: str, path: str) -> str:
    """The BrevoLimits field that governs ``method path`` (path including /v3)."""
    if path == f"{API_PREFIX}/contacts" or path.startswith(f"{API_PREFIX}/contacts/"):
        return "contacts"
    if method == "POST":
        single = {
            f"{API_PREFIX}/events": "events",
            f"{API_PREFIX}/orders/status": "orders",
            f"{API_PREFIX}/products": "products",
        }
        if path in single:
            return single[path]
    return "other"


# --------------------------------------------------------------------------------------------------------
# Internals.
# --------------------------------------------------------------------------------------------------------


class _BrevoError(Exception):
    """An answer in Brevo's error format; raised anywhere in a handler."""

    def __init__(self, status: int, code: str, message: str, metadata: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.metadata = metadata

    def response(self, headers: Mapping[str, str] | None = None) -> JSONResponse:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.metadata is not None:
            body["metadata"] = self.metadata
        return JSONResponse(body, status_code=self.status, headers=headers)


class _Window:
    """Sliding-window log of the requests one API key made in one family."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.hits: deque[float] = deque()

    def _expire(self, now: float) -> None:
        while self.hits and self.hits[0] <= now - self.seconds:
            self.hits.popleft()

    def take(self, now: float) -> bool:
        self._expire(now)
        if len(self.hits) >= self.limit:
            return False
        self.hits.append(now)
        return True

    def headers(self, now: float) -> list[tuple[bytes, bytes]]:
        self._expire(now)
        remaining = max(0, self.limit - len(self.hits))
        reset = max(0, math.ceil(self.hits[0] + self.seconds - now)) if self.hits else 0
        return [
            (b"x-sib-ratelimit-limit", str(self.limit).encode()),
            (b"x-sib-ratelimit-remaining", str(remaining).encode()),
            (b"x-sib-ratelimit-reset", str(reset).encode()),
        ]


@dataclass
class _Fault:
    mode: str
    status: int
    path_prefix: str
    remaining: int | None  # requests still to fault; None when time-bound
    until: float | None  # monotonic deadline; None when count-bound


@dataclass
class _ContactChange:
    """What one request wants to change on a contact, already split into identifiers and attributes."""

    identifiers: dict[str, str | None] = field(default_factory=dict)  # field -> value; None/"" clears
    attributes: dict[str, Any] = field(default_factory=dict)
    email_blacklisted: bool | None = None
    sms_blacklisted: bool | None = None
    link_lists: list[int] = field(default_factory=list)
    unlink_lists: list[int] = field(default_factory=list)

    def has_identifier(self) -> bool:
        return any(value for value in self.identifiers.values())


class _BrevoGate:
    """ASGI middleware: auth, rate limits, faults and call recording in front of the Brevo routes."""

    def __init__(self, app: ASGIApp, sandbox: BrevoSandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox/"):
            await self.app(scope, receive, send)
            return
        await self.sandbox._gatekeep(scope, receive, send, self.app)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _email_key(value: str) -> str:
    return value.strip().lower()


def _phone_key(value: str) -> str:
    # Brevo treats +33612345678, 0033612345678 and 33612345678 as one number.
    digits = re.sub(r"[\s().-]", "", value)
    if digits.startswith("+"):
        digits = digits[1:]
    elif digits.startswith("00"):
        digits = digits[2:]
    return digits


def _identifier_key(kind: str, value: str) -> str:
    if kind == "email":
        return _email_key(value)
    if kind == "sms":
        return _phone_key(value)
    return value


def _as_identifier(value: Any) -> str | None:
    """An identifier value as Brevo would read it (phones may arrive as JSON numbers); None if unusable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, int | float | str):
        return str(value).strip()
    return None


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _raw_segment(request: Request, index: int) -> str:
    """Path segment `index` as the client encoded it, percent-decoded exactly once.

    Starlette matches on the already-decoded path, so an ext_id like ``a%2Fb`` would otherwise be split in
    two; the raw path keeps what the client meant.
    """
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    segments = raw.split(b"?", 1)[0].split(b"/")
    return unquote(segments[index].decode("utf-8", errors="replace"))


def _json_ok(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status)


_FAULT_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "permission_denied",
    404: "document_not_found",
    425: "too_early",
    429: "too_many_requests",
}


# --------------------------------------------------------------------------------------------------------
# The sandbox.
# --------------------------------------------------------------------------------------------------------


class BrevoSandbox:
    """A fake Brevo account behind an ASGI app (`app`), with its state open for inspection.

    State attributes are live objects mutated by the app under `lock` (an RLock): hold it while iterating
    them from another thread, or use find_contact()/snapshot(), which do.
    """

    # How long a "timeout" fault stalls before answering 504 (the client usually gives up first).
    fault_timeout_seconds: float = 30.0
    events_batch_max: int = EVENTS_BATCH_MAX

    def __init__(
        self,
        api_keys: set[str] | frozenset[str] = frozenset({DEFAULT_API_KEY}),
        limits: BrevoLimits | None = None,
        validate: bool = True,
    ) -> None:
        self.api_keys: set[str] = set(api_keys)
        self.limits = limits if limits is not None else BrevoLimits()
        self.validate = validate
        self.lock = threading.RLock()
        self.contacts: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.orders: list[dict[str, Any]] = []
        self.products: dict[str, dict[str, Any]] = {}
        self.categories: dict[str, dict[str, Any]] = {}
        self.lists: dict[int, dict[str, Any]] = {}
        self.folders: dict[int, dict[str, Any]] = {}
        self.attributes: dict[str, dict[str, Any]] = {}
        self.processes: dict[int, dict[str, Any]] = {}
        self.calls: list[CallRecord] = []
        self.ignored_attributes: set[str] = set()
        # Values Brevo drops silently (wrong type for the attribute): {"attribute", "value", "contact_id"}.
        self.ignored_values: list[dict[str, Any]] = []
        self.ecommerce_activated = False
        self._index: dict[str, dict[str, int]] = {"email": {}, "ext_id": {}, "sms": {}}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._faults: list[_Fault] = []
        self._ids: dict[str, itertools.count[int]] = {}
        if validate:
            _body_validators()  # pay the one-off spec load now rather than inside the first request
        self.reset()
        self.app = Starlette(
            routes=self._routes(),
            middleware=[Middleware(_BrevoGate, sandbox=self)],
            exception_handlers={
                _BrevoError: self._brevo_error_response,
                404: self._not_found_response,
                405: self._method_not_allowed_response,
            },
        )

    # ---- Python-side control --------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to a fresh account: no contacts, standard attributes, Brevo's default folder and list."""
        with self.lock:
            # Containers are cleared in place so references held by tests stay valid.
            for container in (
                self.contacts,
                self.events,
                self.orders,
                self.products,
                self.categories,
                self.lists,
                self.folders,
                self.attributes,
                self.processes,
                self.calls,
                self.ignored_attributes,
                self.ignored_values,
                self._windows,
                self._faults,
            ):
                container.clear()
            for kind_index in self._index.values():
                kind_index.clear()
            self.ecommerce_activated = False
            self._ids = {name: itertools.count(1) for name in ("contact", "process", "batch", "product")}
            self.attributes.update(copy.deepcopy(_STANDARD_ATTRIBUTES))
            # A new Brevo account comes with folder 1 and list 2 ("Your first list").
            self.folders[1] = {"id": 1, "name": "Your first folder"}
            self.lists[2] = {"id": 2, "name": "Your first list", "folderId": 1, "createdAt": _now_iso()}
            self._ids["folder"] = itertools.count(2)
            self._ids["list"] = itertools.count(3)

    def inject_fault(
        self,
        *,
        status: int | None = None,
        count: int = 1,
        seconds: float | None = None,
        path_prefix: str = API_PREFIX,
        mode: str = "status",
    ) -> None:
        """Make upcoming authenticated, in-quota requests under `path_prefix` fail.

        mode "status": answer `status` without processing; "timeout": stall `fault_timeout_seconds` (or
        until the client disconnects), then answer `status` (default 504) without processing; "partial":
        POST /v3/events/batch answers 207 with the first half of its events failed (only the rest stored).
        The fault lasts `seconds` if given, else for the next `count` matching requests.

        Only a real server (uvicorn) reports a client's disconnect; through httpx.ASGITransport or
        InProcessTransport a timeout fault stalls the full `fault_timeout_seconds`, so lower it there.
        """
        if mode not in FAULT_MODES:
            raise ValueError(f"mode must be one of {FAULT_MODES}, got {mode!r}")
        if mode == "status" and status is None:
            raise ValueError('mode "status" needs a status')
        if seconds is None and count < 1:
            raise ValueError("count must be >= 1")
        if seconds is not None and seconds <= 0:
            raise ValueError("seconds must be > 0")
        default_status = {"status": 500, "timeout": 504, "partial": 207}[mode]
        fault = _Fault(
            mode=mode,
            status=status if status is not None else default_status,
            path_prefix=path_prefix,
            remaining=None if seconds is not None else count,
            until=None if seconds is None else time.monotonic() + seconds,
        )
        with self.lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self.lock:
            self._faults.clear()

    def find_contact(
        self, *, email: str | None = None, ext_id: str | None = None, sms: str | None = None
    ) -> dict[str, Any] | None:
        """A copy of the contact matching every identifier given, or None."""
        wanted = {"email": email, "ext_id": ext_id, "sms": sms}
        with self.lock:
            owners = {self._owner(kind, value) for kind, value in wanted.items() if value is not None}
            if len(owners) != 1:
                return None
            owner = owners.pop()
            return copy.deepcopy(self.contacts[owner]) if owner is not None else None

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of the whole state (also served at GET /_sandbox/state)."""
        with self.lock:
            per_path = Counter(call.path for call in self.calls)
            per_status = Counter(str(call.status) for call in self.calls)
            return {
                "contacts": [self._contact_dump(contact) for contact in self.contacts.values()],
                "events": copy.deepcopy(self.events),
                "orders": copy.deepcopy(self.orders),
                "products": copy.deepcopy(self.products),
                "categories": copy.deepcopy(self.categories),
                "lists": [self._list_view(item) for item in self.lists.values()],
                "folders": copy.deepcopy(list(self.folders.values())),
                "attributes": self._attribute_views(),
                "processes": copy.deepcopy(list(self.processes.values())),
                "ignored_attributes": sorted(self.ignored_attributes),
                "ignored_values": copy.deepcopy(self.ignored_values),
                "ecommerce_activated": self.ecommerce_activated,
                "calls": dict(per_path),
                "calls_by_status": dict(per_status),
                "calls_total": len(self.calls),
            }

    # ---- the gate: auth, quota, faults, recording ------------------------------------------------------

    async def _gatekeep(self, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        method: str = scope["method"]
        path: str = scope["path"]
        family = rate_limit_family(method, path)
        status = [500]
        recorded = [False]
        extra_headers: list[tuple[bytes, bytes]] = []

        def record() -> None:
            # Recorded before the client can see the answer, so a test that reads `calls` after its
            # client returned never misses the last call.
            with self.lock:
                if not recorded[0]:
                    recorded[0] = True
                    self.calls.append(CallRecord(method, path, status[0], family, time.time()))

        async def send_marked(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra_headers]}
                record()
            await send(message)

        try:
            if not path.startswith(f"{API_PREFIX}/"):
                await app(scope, receive, send_marked)
                return
            key = ""
            for name, value in scope.get("headers", []):
                if name == b"api-key":
                    key = value.decode("latin-1")
            now = time.monotonic()
            with self.lock:
                window = self._window(key, family)
                # Refused requests (bad key, over quota) do not consume quota, so a client that backs off
                # for x-sib-ratelimit-reset seconds always gets through; Brevo does not document this.
                allowed = key in self.api_keys and window.take(now)
                extra_headers.extend(window.headers(now))
            if key not in self.api_keys:
                await _BrevoError(401, "unauthorized", "Key not found").response()(
                    scope, receive, send_marked
                )
                return
            if not allowed:
                message = (
                    f"Too many requests: {window.limit} per {window.seconds:g}s for this endpoint family"
                )
                refusal = _BrevoError(429, "too_many_requests", message)
                await refusal.response()(scope, receive, send_marked)
                return
            fault = self._claim_fault(method, path)
            if fault is not None and fault.mode == "partial":
                scope = {**scope, "sandbox.partial_fault": True}
            elif fault is not None:
                if fault.mode == "timeout" and await self._stall(receive):
                    status[0] = 499
                    return
                if fault.status == 429:
                    extra_headers[:] = [
                        (name, b"0" if name == b"x-sib-ratelimit-remaining" else value)
                        for name, value in extra_headers
                    ]
                code = _FAULT_CODES.get(
                    fault.status, "internal_error" if fault.status >= 500 else "bad_request"
                )
                injected = _BrevoError(fault.status, code, f"Injected fault: HTTP {fault.status}")
                await injected.response()(scope, receive, send_marked)
                return
            raw_path: bytes = scope.get("raw_path") or b""
            if b"%2f" in raw_path.lower():
                # Route on segments decoded one at a time so an encoded "/" stays inside its segment.
                segments = raw_path.split(b"?", 1)[0].decode("utf-8", errors="replace").split("/")
                routed = "/".join(unquote(segment).replace("/", "%2F") for segment in segments)
                scope = {**scope, "path": routed}
            await app(scope, receive, send_marked)
        finally:
            record()  # a call that never answered (timeout fault, client gone) is recorded too

    def _window(self, key: str, family: str) -> _Window:
        limit, seconds = getattr(self.limits, family)
        window = self._windows.get((key, family))
        # A new window also when `limits` was replaced or edited since: the new numbers apply at once.
        if window is None or (window.limit, window.seconds) != (limit, seconds):
            window = self._windows[(key, family)] = _Window(limit, seconds)
        return window

    def _claim_fault(self, method: str, path: str) -> _Fault | None:
        now = time.monotonic()
        with self.lock:
            self._faults[:] = [
                f
                for f in self._faults
                if (f.until is None or f.until > now) and (f.remaining is None or f.remaining > 0)
            ]
            for fault in self._faults:
                if not path.startswith(fault.path_prefix):
                    continue
                if fault.mode == "partial" and (method, path) != ("POST", f"{API_PREFIX}/events/batch"):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    async def _stall(self, receive: Receive) -> bool:
        """Wait out a timeout fault; True if the client disconnected first."""

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await asyncio.wait_for(disconnected(), timeout=self.fault_timeout_seconds)
        except TimeoutError:
            return False
        return True

    # ---- request plumbing ----------------------------------------------------------------------------

    def _parse_body(self, raw: bytes, operation: tuple[str, str] | None) -> dict[str, Any]:
        if not raw.strip():
            raise _BrevoError(400, "missing_parameter", "Request body is required")
        try:
            body = jsontext.loads(raw)  # what the standard library reads, at orjson's speed
        except ValueError as exc:
            raise _BrevoError(400, "invalid_parameter", f"Malformed JSON body: {exc}") from None
        if not isinstance(body, dict):
            raise _BrevoError(400, "invalid_parameter", "Request body must be a JSON object")
        if self.validate and operation is not None:
            problem = _schema_problem(_body_validators()[operation], body)
            if problem is not None:
                raise _BrevoError(400, "invalid_parameter", problem)
        return body

    async def _body(self, request: Request, operation: tuple[str, str] | None) -> dict[str, Any]:
        return self._parse_body(await request.body(), operation)

    async def _brevo_error_response(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _BrevoError)
        return exc.response()

    async def _not_found_response(self, request: Request, exc: Exception) -> Response:
        message = f"{request.method} {request.url.path}: no such endpoint"
        return _BrevoError(404, "document_not_found", message).response()

    async def _method_not_allowed_response(self, request: Request, exc: Exception) -> Response:
        headers = exc.headers if isinstance(exc, HTTPException) else None
        message = f"{request.method} Method is not allowed on this path"
        return _BrevoError(405, "method_not_allowed", message).response(headers)

    def _routes(self) -> list[Route]:
        v3 = API_PREFIX
        table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
            ("/account", self._get_account, "GET"),
            ("/contacts", self._list_contacts, "GET"),
            ("/contacts", self._create_contact, "POST"),
            ("/contacts/import", self._import_contacts, "POST"),
            ("/contacts/attributes", self._list_attributes, "GET"),
            ("/contacts/attributes/{attributeCategory}/{attributeName}", self._create_attribute, "POST"),
            ("/contacts/attributes/{attributeCategory}/{attributeName}", self._update_attribute, "PUT"),
            ("/contacts/folders", self._list_folders, "GET"),
            ("/contacts/folders", self._create_folder, "POST"),
            ("/contacts/lists", self._list_lists, "GET"),
            ("/contacts/lists", self._create_list, "POST"),
            ("/contacts/lists/{listId}", self._get_list, "GET"),
            ("/contacts/lists/{listId}/contacts", self._list_members, "GET"),
            ("/contacts/lists/{listId}/contacts/add", self._add_to_list, "POST"),
            ("/contacts/{identifier}", self._get_contact, "GET"),
            ("/contacts/{identifier}", self._update_contact, "PUT"),
            ("/contacts/{identifier}", self._delete_contact, "DELETE"),
            ("/events", self._create_event, "POST"),
            ("/events/batch", self._create_events_batch, "POST"),
            ("/orders", self._list_orders, "GET"),
            ("/orders/status", self._create_order, "POST"),
            ("/orders/status/batch", self._create_orders_batch, "POST"),
            ("/products", self._create_product, "POST"),
            ("/products/batch", self._create_products_batch, "POST"),
            ("/categories/batch", self._create_categories_batch, "POST"),
            ("/ecommerce/activate", self._activate_ecommerce, "POST"),
            ("/processes/{processId}", self._get_process, "GET"),
        ]
        routes = [Route(v3 + path, endpoint, methods=[method]) for path, endpoint, method in table]
        routes += [
            Route("/_sandbox/state", self._control_state, methods=["GET"]),
            Route("/_sandbox/faults", self._control_inject, methods=["POST"]),
            Route("/_sandbox/faults", self._control_clear, methods=["DELETE"]),
            Route("/_sandbox/reset", self._control_reset, methods=["POST"]),
        ]
        return routes

    # ---- contacts: identity, attributes, views --------------------------------------------------------

    def _owner(self, kind: str, value: str) -> int | None:
        return self._index[kind].get(_identifier_key(kind, value))

    def _set_identifier(self, contact: dict[str, Any], kind: str, value: str | None) -> None:
        old = contact[kind]
        if old is not None:
            self._index[kind].pop(_identifier_key(kind, old), None)
        if value:
            stored = _email_key(value) if kind == "email" else value  # Brevo stores emails lower-cased
            contact[kind] = stored
            self._index[kind][_identifier_key(kind, stored)] = contact["id"]
        else:
            contact[kind] = None

    def _new_contact(self) -> dict[str, Any]:
        now = _now_iso()
        contact: dict[str, Any] = {
            "id": next(self._ids["contact"]),
            "email": None,
            "ext_id": None,
            "sms": None,
            "attributes": {},
            "emailBlacklisted": False,
            "smsBlacklisted": False,
            "listIds": set(),
            "createdAt": now,
            "modifiedAt": now,
        }
        self.contacts[contact["id"]] = contact
        return contact

    def _change_from(
        self,
        attributes: Mapping[str, Any] | None,
        *,
        email: Any = None,
        ext_id: Any = None,
        email_blacklisted: bool | None = None,
        sms_blacklisted: bool | None = None,
        link_lists: Iterable[int] = (),
        unlink_lists: Iterable[int] = (),
    ) -> _ContactChange:
        change = _ContactChange(
            email_blacklisted=email_blacklisted,
            sms_blacklisted=sms_blacklisted,
            link_lists=list(link_lists),
            unlink_lists=list(unlink_lists),
        )
        for name, value in (attributes or {}).items():
            if name in _IDENTIFIER_ATTRIBUTES:
                change.identifiers[_IDENTIFIER_ATTRIBUTES[name]] = _as_identifier(value) or ""
            else:
                change.attributes[name] = value
        # Top-level email/ext_id win over their attribute spelling.
        if email is not None:
            change.identifiers["email"] = _as_identifier(email) or ""
        if ext_id is not None:
            change.identifiers["ext_id"] = _as_identifier(ext_id) or ""
        return change

    def _conflicts(self, change: _ContactChange, own_id: int | None) -> list[str]:
        """Identifiers in `change` that already belong to a contact other than `own_id`."""
        clashing = []
        for kind, value in change.identifiers.items():
            if value:
                owner = self._owner(kind, value)
                if owner is not None and owner != own_id:
                    clashing.append(_IDENTIFIER_NAMES[kind])
        return clashing

    def _matches(self, change: _ContactChange) -> dict[str, int]:
        found = {}
        for kind, value in change.identifiers.items():
            if value:
                owner = self._owner(kind, value)
                if owner is not None:
                    found[kind] = owner
        return found

    def _check_lists(self, list_ids: Iterable[int], where: str = "listIds") -> None:
        missing = sorted(set(list_ids) - set(self.lists))
        if missing:
            # Brevo's exact wording is unknown; refusing keeps a connector from relying on phantom lists.
            raise _BrevoError(400, "invalid_parameter", f"{where}: list(s) {missing} do not exist")

    @staticmethod
    def _coerce(definition: Mapping[str, Any], value: Any) -> tuple[bool, Any]:
        kind = definition.get("type", "text")
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if definition.get("enumeration"):
            options = {item["value"]: item["label"] for item in definition["enumeration"]}
            if is_number and value in options:
                return True, value
            labels = {label: number for number, label in options.items()}
            return (True, labels[value]) if isinstance(value, str) and value in labels else (False, None)
        if kind == "float":
            if is_number:
                return True, value
            if isinstance(value, str):
                try:
                    return True, float(value)
                except ValueError:
                    return False, None
            return False, None
        if kind == "boolean":
            if isinstance(value, bool):
                return True, value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return True, value.lower() == "true"
            return False, None
        if kind == "date":
            ok = isinstance(value, str) and _DATE_VALUE.fullmatch(value) is not None
            return ok, value if ok else None
        if kind == "multiple-choice":
            options_list = definition.get("multiCategoryOptions")
            ok = isinstance(value, list) and all(isinstance(item, str) for item in value)
            if ok and options_list:
                ok = set(value) <= set(options_list)
            return ok, value if ok else None
        ok = is_number or isinstance(value, str)  # text, id, user
        return ok, value if ok else None

    def _apply(self, contact: dict[str, Any], change: _ContactChange, *, erase_empty: bool = True) -> None:
        """Write `change` into `contact`; the caller has checked identifier conflicts and lists."""
        old_email = contact["email"]
        for kind, value in change.identifiers.items():
            if value or erase_empty:  # an import row's empty SMS cell must not wipe the stored number
                self._set_identifier(contact, kind, value or None)
        for name, value in change.attributes.items():
            definition = self.attributes.get(name)
            if definition is None or definition["category"] in ("calculated", "global"):
                self.ignored_attributes.add(name)  # Brevo drops attributes the account lacks, silently
                continue
            if value is None or value == "":
                if erase_empty:
                    contact["attributes"].pop(name, None)
                continue
            ok, stored = self._coerce(definition, value)
            if ok:
                contact["attributes"][name] = stored
            else:
                self.ignored_values.append({"attribute": name, "value": value, "contact_id": contact["id"]})
        if change.email_blacklisted is not None:
            contact["emailBlacklisted"] = change.email_blacklisted
        elif contact["email"] != old_email and old_email is not None:
            contact["emailBlacklisted"] = False  # documented: a new email address resubscribes the contact
        if change.sms_blacklisted is not None:
            contact["smsBlacklisted"] = change.sms_blacklisted
        contact["listIds"].update(change.link_lists)
        contact["listIds"].difference_update(change.unlink_lists)
        contact["modifiedAt"] = _now_iso()

    def _resolve(self, identifier: str, identifier_type: str | None) -> dict[str, Any]:
        if identifier_type is None:
            identifier_type = "email_id" if "@" in identifier else "contact_id"
        if identifier_type not in _IDENTIFIER_TYPES:
            allowed = ", ".join(_IDENTIFIER_TYPES)
            raise _BrevoError(400, "invalid_parameter", f"identifierType must be one of {allowed}")
        kind = _IDENTIFIER_TYPES[identifier_type]
        contact: dict[str, Any] | None = None
        if kind is None:
            contact = self.contacts.get(int(identifier)) if _is_number(identifier) else None
        elif kind in self._index:
            owner = self._owner(kind, identifier)
            contact = self.contacts.get(owner) if owner is not None else None
        else:
            # WhatsApp and landline numbers are plain attributes here, so they are searched, not indexed.
            wanted = _phone_key(identifier)
            contact = next(
                (
                    c
                    for c in self.contacts.values()
                    if _phone_key(str(c["attributes"].get(kind, ""))) == wanted
                ),
                None,
            )
        if contact is None:
            raise _BrevoError(404, "document_not_found", "Contact does not exist")
        return contact

    def _contact_view(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        """A contact as GET /contacts/{identifier} shows it: phone and ext id among the attributes."""
        attributes = copy.deepcopy(contact["attributes"])
        if contact["sms"]:
            attributes["SMS"] = contact["sms"]
        if contact["ext_id"]:
            attributes["EXT_ID"] = contact["ext_id"]
        view = {
            "id": contact["id"],
            "emailBlacklisted": contact["emailBlacklisted"],
            "smsBlacklisted": contact["smsBlacklisted"],
            "createdAt": contact["createdAt"],
            "modifiedAt": contact["modifiedAt"],
            "listIds": sorted(contact["listIds"]),
            "attributes": attributes,
        }
        if contact["email"]:
            view["email"] = contact["email"]
        return view

    def _contact_dump(self, contact: Mapping[str, Any]) -> dict[str, Any]:
        dump = copy.deepcopy(dict(contact))
        dump["listIds"] = sorted(contact["listIds"])
        return dump

    def _list_view(self, item: Mapping[str, Any]) -> dict[str, Any]:
        members = [c for c in self.contacts.values() if item["id"] in c["listIds"]]
        return {
            **item,
            "uniqueSubscribers": len(members),
            "totalSubscribers": sum(1 for c in members if not c["emailBlacklisted"]),
            "totalBlacklisted": sum(1 for c in members if c["emailBlacklisted"]),
        }

    def _attribute_views(self) -> list[dict[str, Any]]:
        return [{"name": name, **copy.deepcopy(spec)} for name, spec in self.attributes.items()]

    # ---- endpoints: account, contacts -----------------------------------------------------------------

    async def _get_account(self, request: Request) -> Response:
        return _json_ok(
            {
                "organization_id": "sandbox-organization",
                "user_id": 1,
                "enterprise": False,
                "email": "sandbox@example.com",
                "firstName": "Sandbox",
                "lastName": "Brevo",
                "companyName": "Brevo Sandbox",
                "address": {
                    "city": "Paris",
                    "country": "France",
                    "street": "1 rue du Test",
                    "zipCode": "75001",
                },
                "dateTimePreferences": {
                    "timezone": "Europe/Paris",
                    "timeFormat": "24",
                    "dateFormat": "dd-mm-yyyy",
                },
                "plan": [{"type": "free", "creditsType": "sendLimit", "credits": 300}],
                "relay": {"enabled": False, "data": {"userName": "", "relay": "", "port": 587}},
                "marketingAutomation": {"enabled": True, "key": "sandbox-ma-key"},
            }
        )

    async def _list_contacts(self, request: Request) -> Response:
        limit, offset = self._paging(request, default_limit=50, max_limit=1000)
        with self.lock:
            ordered = sorted(self.contacts.values(), key=lambda c: c["id"], reverse=self._descending(request))
            page = [self._contact_view(c) for c in ordered[offset : offset + limit]]
            return _json_ok({"contacts": page, "count": len(self.contacts)})

    def _paging(self, request: Request, *, default_limit: int, max_limit: int) -> tuple[int, int]:
        try:
            limit = int(request.query_params.get("limit", default_limit))
            offset = int(request.query_params.get("offset", 0))
        except ValueError:
            raise _BrevoError(400, "invalid_parameter", "limit and offset must be integers") from None
        if not 0 <= limit <= max_limit or offset < 0:
            raise _BrevoError(400, "out_of_range", f"limit must be between 0 and {max_limit}, offset >= 0")
        return limit, offset

    def _descending(self, request: Request) -> bool:
        sort = request.query_params.get("sort", "desc")
        if sort not in ("asc", "desc"):
            raise _BrevoError(400, "invalid_parameter", "sort must be asc or desc")
        return sort == "desc"

    async def _create_contact(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts", "post"))
        change = self._change_from(
            body.get("attributes"),
            email=body.get("email"),
            ext_id=body.get("ext_id"),
            email_blacklisted=body.get("emailBlacklisted"),
            sms_blacklisted=body.get("smsBlacklisted"),
            link_lists=body.get("listIds", ()),
        )
        if not change.has_identifier():
            raise _BrevoError(
                400, "missing_parameter", "An identifier is required: email, ext_id or attributes.SMS"
            )
        with self.lock:
            self._check_lists(change.link_lists)
            matches = self._matches(change)
            if not matches:
                contact = self._new_contact()
                self._apply(contact, change)
                return _json_ok({"id": contact["id"]}, 201)
            names = sorted(_IDENTIFIER_NAMES[kind] for kind in matches)
            if not body.get("updateEnabled", False):
                raise _BrevoError(
                    400,
                    "duplicate_parameter",
                    f"Unable to create contact, {', '.join(names)} is already associated "
                    "with another Contact",
                    {"duplicate_identifiers": names},
                )
            owners = set(matches.values())
            if len(owners) > 1:
                raise _BrevoError(
                    400,
                    "duplicate_parameter",
                    f"Unable to update contact, {', '.join(names)} belong to different contacts",
                    {"duplicate_identifiers": names},
                )
            self._apply(self.contacts[owners.pop()], change)
        return Response(status_code=204)

    async def _get_contact(self, request: Request) -> Response:
        with self.lock:
            contact = self._resolve(_raw_segment(request, 3), request.query_params.get("identifierType"))
            return _json_ok(self._contact_view(contact))

    async def _update_contact(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/{identifier}", "put"))
        change = self._change_from(
            body.get("attributes"),
            ext_id=body.get("ext_id"),
            email_blacklisted=body.get("emailBlacklisted"),
            sms_blacklisted=body.get("smsBlacklisted"),
            link_lists=body.get("listIds", ()),
            unlink_lists=body.get("unlinkListIds", ()),
        )
        with self.lock:
            contact = self._resolve(_raw_segment(request, 3), request.query_params.get("identifierType"))
            self._check_lists(change.link_lists)
            clashing = self._conflicts(change, contact["id"])
            if clashing:
                raise _BrevoError(
                    400,
                    "duplicate_parameter",
                    f"Unable to update contact, {', '.join(clashing)} is already associated "
                    "with another Contact",
                    {"duplicate_identifiers": clashing},
                )
            self._apply(contact, change)
        return Response(status_code=204)

    async def _delete_contact(self, request: Request) -> Response:
        with self.lock:
            contact = self._resolve(_raw_segment(request, 3), request.query_params.get("identifierType"))
            for kind in self._index:
                self._set_identifier(contact, kind, None)
            del self.contacts[contact["id"]]
        return Response(status_code=204)

    async def _import_contacts(self, request: Request) -> Response:
        raw = await request.body()
        if len(raw) > IMPORT_MAX_BYTES:
            raise _BrevoError(
                400,
                "invalid_parameter",
                f"Import body is {len(raw)} bytes; jsonBody/fileBody may not exceed 10 MB "
                "(Brevo advises about 8 MB): split the import",
            )
        body = self._parse_body(raw, ("/contacts/import", "post"))
        sources = [name for name in ("fileUrl", "fileBody", "jsonBody") if name in body]
        if not sources:
            raise _BrevoError(400, "missing_parameter", "One of fileUrl, fileBody or jsonBody is required")
        if len(sources) > 1:
            raise _BrevoError(
                400, "invalid_parameter", f"Pass only one of fileUrl, fileBody, jsonBody; got {sources}"
            )
        if sources == ["fileUrl"]:
            raise _BrevoError(
                400, "invalid_parameter", "The sandbox cannot fetch fileUrl; send jsonBody or fileBody"
            )
        rows = body["jsonBody"] if "jsonBody" in body else self._csv_rows(body["fileBody"])
        list_ids: list[int] = list(body.get("listIds") or [])
        new_list = body.get("newList") or {}
        if not list_ids and not new_list.get("listName"):
            raise _BrevoError(400, "missing_parameter", "listIds or newList.listName is required")
        update_existing = body.get("updateExistingContacts", True)
        erase_empty = update_existing and body.get("emptyContactsAttributes", False)
        with self.lock:
            self._check_lists(list_ids)
            if new_list.get("listName"):
                folder_id = new_list.get("folderId")
                if folder_id is None:
                    raise _BrevoError(400, "missing_parameter", "newList.folderId is required with listName")
                if folder_id not in self.folders:
                    raise _BrevoError(
                        400, "invalid_parameter", f"newList.folderId: folder {folder_id} does not exist"
                    )
                list_ids.append(self._add_list(new_list["listName"], folder_id)["id"])
            report = self._import_rows(
                rows,
                list_ids=list_ids,
                update_existing=update_existing,
                erase_empty=erase_empty,
                email_blacklist=body.get("emailBlacklist", False),
                sms_blacklist=body.get("smsBlacklist", False),
            )
            process_id = next(self._ids["process"])
            now = _now_iso()
            # Real Brevo queues the import; applying it at once is a valid schedule of that queue.
            self.processes[process_id] = {
                "id": process_id,
                "name": "IMPORTUSER",  # the spec's enum value for contact imports
                "status": "completed",
                "info": {"import": report},
                "created_at": now,
                "completed_at": now,
            }
        return _json_ok({"processId": process_id}, 202)

    @staticmethod
    def _csv_rows(file_body: str) -> list[dict[str, Any]]:
        reader = csv.DictReader(io.StringIO(file_body), delimiter=";")
        rows = []
        for record in reader:
            attributes = {(name or "").strip().upper(): value for name, value in record.items() if name}
            rows.append({"email": attributes.pop("EMAIL", None), "attributes": attributes})
        return rows

    def _import_rows(
        self,
        rows: list[Any],
        *,
        list_ids: list[int],
        update_existing: bool,
        erase_empty: bool,
        email_blacklist: bool,
        sms_blacklist: bool,
    ) -> dict[str, int]:
        report = Counter(
            {
                "invalid_emails": 0,
                "duplicate_contact_id": 0,
                "duplicate_ext_id": 0,
                "duplicate_email_id": 0,
                "duplicate_phone_id": 0,
                "created_contacts": 0,
                "updated_contacts": 0,
                "skipped_rows": 0,
            }
        )
        duplicate_key = {
            "email": "duplicate_email_id",
            "ext_id": "duplicate_ext_id",
            "sms": "duplicate_phone_id",
        }
        for row in rows:
            attributes = dict(row.get("attributes") or {}) if isinstance(row, dict) else {}
            email = row.get("email") if isinstance(row, dict) else None
            change = self._change_from(
                attributes,
                email=email,
                email_blacklisted=True if email_blacklist else None,
                sms_blacklisted=True if sms_blacklist else None,
                link_lists=list_ids,
            )
            given_email = change.identifiers.get("email")
            if given_email and "@" not in given_email:
                report["invalid_emails"] += 1
                report["skipped_rows"] += 1
                continue
            if not change.has_identifier():
                report["skipped_rows"] += 1
                continue
            # A row updates the contact its email names, else its EXT_ID, else its SMS; an identifier that
            # belongs to yet another contact makes the row a duplicate, which Brevo skips and counts.
            owners = self._matches(change)
            target = next((owners[kind] for kind in ("email", "ext_id", "sms") if kind in owners), None)
            clashing = [kind for kind, owner in owners.items() if owner != target]
            if clashing:
                for kind in clashing:
                    report[duplicate_key[kind]] += 1
                report["skipped_rows"] += 1
                continue
            if target is None:
                contact = self._new_contact()
                self._apply(contact, change, erase_empty=False)
                report["created_contacts"] += 1
            elif update_existing:
                self._apply(self.contacts[target], change, erase_empty=erase_empty)
                report["updated_contacts"] += 1
            else:
                self.contacts[target]["listIds"].update(list_ids)
                report["skipped_rows"] += 1
        return dict(report)

    async def _list_attributes(self, request: Request) -> Response:
        with self.lock:
            return _json_ok({"attributes": self._attribute_views()})

    async def _create_attribute(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/attributes/{attributeCategory}/{attributeName}", "post"))
        category = _raw_segment(request, 4)
        name = _raw_segment(request, 5).upper()  # Brevo attribute names are upper-case
        if category not in _ATTRIBUTE_CATEGORIES:
            raise _BrevoError(
                400, "invalid_parameter", f"attributeCategory must be one of {_ATTRIBUTE_CATEGORIES}"
            )
        kind = body.get("type", "category" if category == "category" else "text")
        if kind == "id" and category != "transactional":
            raise _BrevoError(
                400, "invalid_parameter", "type id is only available for transactional attributes"
            )
        if kind in ("user", "multiple-choice") and category != "normal":
            raise _BrevoError(
                400, "invalid_parameter", f"type {kind} is only available for normal attributes"
            )
        if category == "category" and not body.get("enumeration"):
            raise _BrevoError(400, "missing_parameter", "enumeration is required for category attributes")
        with self.lock:
            if name in self.attributes:
                raise _BrevoError(400, "duplicate_parameter", "Attribute name must be unique")
            definition: dict[str, Any] = {"category": category, "type": kind}
            for optional in ("enumeration", "multiCategoryOptions", "value", "isRecurring"):
                if optional in body:
                    definition[optional] = copy.deepcopy(body[optional])
            self.attributes[name] = definition
        return Response(status_code=201)

    async def _update_attribute(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/attributes/{attributeCategory}/{attributeName}", "put"))
        name = _raw_segment(request, 5).upper()
        with self.lock:
            definition = self.attributes.get(name)
            if definition is None or definition["category"] != _raw_segment(request, 4):
                raise _BrevoError(404, "document_not_found", f"Attribute {name} does not exist")
            if "multiCategoryOptions" in body:
                if definition["type"] != "multiple-choice":
                    raise _BrevoError(400, "invalid_parameter",
                                      "multiCategoryOptions is only available for multiple-choice attributes")
                # Brevo adds the options it is given to those the attribute already has.
                known = list(definition.get("multiCategoryOptions") or [])
                definition["multiCategoryOptions"] = known + [o for o in body["multiCategoryOptions"]
                                                              if o not in known]
            for optional in ("enumeration", "value"):
                if optional in body:
                    definition[optional] = copy.deepcopy(body[optional])
        return Response(status_code=204)

    # ---- folders and lists ----------------------------------------------------------------------------

    def _add_list(self, name: str, folder_id: int) -> dict[str, Any]:
        list_id = next(self._ids["list"])
        self.lists[list_id] = {"id": list_id, "name": name, "folderId": folder_id, "createdAt": _now_iso()}
        return self.lists[list_id]

    async def _list_folders(self, request: Request) -> Response:
        limit, offset = self._paging(request, default_limit=10, max_limit=50)
        with self.lock:
            ordered = sorted(self.folders.values(), key=lambda f: f["id"], reverse=self._descending(request))
            page = copy.deepcopy(ordered[offset : offset + limit])
            return _json_ok({"folders": page, "count": len(self.folders)})

    async def _create_folder(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/folders", "post"))
        if not body.get("name"):
            raise _BrevoError(400, "missing_parameter", "name is required")
        with self.lock:
            folder_id = next(self._ids["folder"])
            self.folders[folder_id] = {"id": folder_id, "name": body["name"]}
        return _json_ok({"id": folder_id}, 201)

    async def _list_lists(self, request: Request) -> Response:
        # Brevo pages lists 10 at a time by default and at most 50: a client must follow offsets.
        limit, offset = self._paging(request, default_limit=10, max_limit=50)
        with self.lock:
            ordered = sorted(
                self.lists.values(), key=lambda item: item["id"], reverse=self._descending(request)
            )
            page = [self._list_view(item) for item in ordered[offset : offset + limit]]
            return _json_ok({"lists": page, "count": len(self.lists)})

    async def _list_members(self, request: Request) -> Response:
        limit, offset = self._paging(request, default_limit=50, max_limit=500)
        with self.lock:
            item = self._existing_list(request)
            members = sorted((c for c in self.contacts.values() if item["id"] in c["listIds"]),
                             key=lambda c: c["id"], reverse=self._descending(request))
            return _json_ok({"contacts": [self._contact_view(c) for c in members[offset : offset + limit]],
                             "count": len(members)})

    async def _list_orders(self, request: Request) -> Response:
        """Each order once, in its latest status (a status update replaces the order in Brevo)."""
        limit, offset = self._paging(request, default_limit=50, max_limit=100)
        with self.lock:
            latest = {str(o["id"]): o for o in self.orders}
            ordered = sorted(latest.values(), key=lambda o: str(o.get("createdAt")),
                             reverse=self._descending(request))
            page = [{k: v for k, v in o.items() if k not in ("historical", "batchId")}
                    for o in ordered[offset : offset + limit]]
            return _json_ok({"orders": copy.deepcopy(page), "count": len(latest)})

    async def _get_list(self, request: Request) -> Response:
        with self.lock:
            return _json_ok(self._list_view(self._existing_list(request)))

    def _existing_list(self, request: Request) -> dict[str, Any]:
        raw_id = _raw_segment(request, 4)
        found = self.lists.get(int(raw_id)) if _is_number(raw_id) else None
        if found is None:
            raise _BrevoError(404, "document_not_found", "List ID does not exist")
        return found

    async def _create_list(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/lists", "post"))
        with self.lock:
            if body.get("folderId") not in self.folders:
                raise _BrevoError(
                    400, "invalid_parameter", f"folderId: folder {body.get('folderId')} does not exist"
                )
            created = self._add_list(body["name"], body["folderId"])
        return _json_ok({"id": created["id"]}, 201)

    async def _add_to_list(self, request: Request) -> Response:
        body = await self._body(request, ("/contacts/lists/{listId}/contacts/add", "post"))
        success: list[Any] = []
        failure: list[Any] = []
        with self.lock:
            target = self._existing_list(request)
            kind, wanted = next(
                (
                    (kind, body[key])
                    for key, kind in (("emails", "email"), ("ids", "id"), ("extIds", "ext_id"))
                    if key in body
                ),
                (None, []),
            )
            if kind is None:
                raise _BrevoError(400, "missing_parameter", "One of emails, ids or extIds is required")
            for value in wanted:
                owner = (
                    (value if value in self.contacts else None)
                    if kind == "id"
                    else self._owner(kind, str(value))
                )
                # Brevo reports contacts already in the list among the failures, like unknown ones.
                if owner is None or target["id"] in self.contacts[owner]["listIds"]:
                    failure.append(value)
                else:
                    self.contacts[owner]["listIds"].add(target["id"])
                    success.append(value)
        return _json_ok({"contacts": {"success": success, "failure": failure}}, 201)

    # ---- events ---------------------------------------------------------------------------------------

    def _check_event(self, event: Mapping[str, Any]) -> None:
        """Brevo's rules on an event that the spec's schema does not express."""
        name = event.get("event_name")
        if not isinstance(name, str) or EVENT_NAME_PATTERN.fullmatch(name) is None:
            raise _BrevoError(
                400, "invalid_parameter", "event_name: 1 to 255 characters among A-Z a-z 0-9 _ - only"
            )
        identifiers = event.get("identifiers") or {}
        if not any(value not in (None, "") for value in identifiers.values()):
            raise _BrevoError(
                400, "missing_parameter", "identifiers: at least one non-empty identifier is required"
            )
        properties = event.get("event_properties")
        if isinstance(properties, dict):
            bad = [key for key in properties if EVENT_NAME_PATTERN.fullmatch(key) is None]
            if bad:
                raise _BrevoError(
                    400,
                    "invalid_parameter",
                    f"event_properties: keys must be 1-255 of A-Z a-z 0-9 _ -: {bad}",
                )
            size = len(json.dumps(properties, separators=(",", ":")).encode())
            if size > EVENT_PROPERTIES_MAX_BYTES:
                raise _BrevoError(
                    400, "out_of_range", f"event_properties: {size} bytes exceeds the 50 KB limit"
                )
        date = event.get("event_date")
        if date is not None:
            try:
                datetime.fromisoformat(str(date).replace("Z", "+00:00"))
            except ValueError:
                raise _BrevoError(
                    400, "invalid_parameter", f"event_date: {date!r} is not an ISO-8601 timestamp"
                ) from None

    def _store_event(self, event: Mapping[str, Any]) -> None:
        """Attach the event to its contact (creating one for unknown email/ext_id/phone) and keep it."""
        identifiers = event.get("identifiers") or {}
        with self.lock:
            contact: dict[str, Any] | None = None
            if identifiers.get("contact_id") is not None:
                contact = self.contacts.get(identifiers["contact_id"])
                if contact is None:
                    raise _BrevoError(
                        404, "document_not_found", f"contact_id {identifiers['contact_id']} does not exist"
                    )
            else:
                change = self._change_from(
                    {"SMS": identifiers.get("phone_id")} if identifiers.get("phone_id") else None,
                    email=identifiers.get("email_id"),
                    ext_id=identifiers.get("ext_id"),
                )
                matches = self._matches(change)
                for kind in ("email", "ext_id", "sms"):  # email wins, as Brevo documents no other order
                    if kind in matches:
                        contact = self.contacts[matches[kind]]
                        break
                if contact is None and change.has_identifier():
                    contact = self._new_contact()
                    self._apply(contact, change)
            properties = event.get("contact_properties")
            if contact is not None and properties:
                updates = {k: v for k, v in properties.items() if k not in _IDENTIFIER_ATTRIBUTES}
                self._apply(contact, _ContactChange(attributes=updates))
            self.events.append(copy.deepcopy(dict(event)))

    async def _create_event(self, request: Request) -> Response:
        event = await self._body(request, ("/events", "post"))
        self._check_event(event)
        self._store_event(event)
        return Response(status_code=204)

    async def _create_events_batch(self, request: Request) -> Response:
        body = await self._body(request, None)
        events = body.get("events")
        if not isinstance(events, list):
            raise _BrevoError(400, "invalid_parameter", "events: an array of events is required")
        if not events:
            raise _BrevoError(400, "invalid_parameter", "events: at least one event is required")
        if len(events) > self.events_batch_max:
            raise _BrevoError(
                400, "out_of_range", f"events: at most {self.events_batch_max} events per batch"
            )
        if self.validate:
            # The batch endpoint is newer than the vendored spec: each item is held to the /events schema.
            # A schema failure refuses the whole request, as a gateway validating the body would.
            validator = _body_validators()[("/events", "post")]
            for index, event in enumerate(events):
                problem = _schema_problem(validator, event, f"events[{index}]")
                if problem is not None:
                    raise _BrevoError(400, "invalid_parameter", problem)
        # Brevo's changelog: events failing its own rules make a 207 with per-event errors; the rest are kept.
        failures: dict[str, list[int]] = {}
        doomed = max(1, len(events) // 2) if request.scope.get("sandbox.partial_fault") else 0
        for index, event in enumerate(events):
            try:
                if not isinstance(event, dict):
                    raise _BrevoError(400, "invalid_parameter", "event must be a JSON object")
                if index < doomed:
                    raise _BrevoError(500, "internal_error", "Injected fault: event could not be processed")
                self._check_event(event)
                self._store_event(event)
            except _BrevoError as refusal:
                failures.setdefault(refusal.message, []).append(index)
        failed = sum(len(indexes) for indexes in failures.values())
        if not failed:
            return _json_ok({"message": "Batch accepted", "count": len(events)}, 202)
        return _json_ok(
            {
                "status": "partial_success",
                "total_events": len(events),
                "successful_events": len(events) - failed,
                "failed_events": failed,
                "errors": [
                    {"eventIndex": indexes, "message": message} for message, indexes in failures.items()
                ],
            },
            207,
        )

    # ---- ecommerce ------------------------------------------------------------------------------------

    @staticmethod
    def _check_order_contact(order: Mapping[str, Any], where: str) -> None:
        identifiers = order.get("identifiers") or {}
        if not order.get("email") and not any(identifiers.values()):
            # The spec makes neither mandatory, but an order Brevo cannot tie to a contact is refused.
            raise _BrevoError(
                400,
                "missing_parameter",
                f"{where}: email or identifiers (email_id, ext_id, phone_id, loyalty_subscription_id) "
                "is required",
            )

    async def _create_order(self, request: Request) -> Response:
        order = await self._body(request, ("/orders/status", "post"))
        self._check_order_contact(order, "body")
        with self.lock:
            self.orders.append({**copy.deepcopy(order), "historical": False, "batchId": None})
        return Response(status_code=204)

    async def _create_orders_batch(self, request: Request) -> Response:
        body = await self._body(request, ("/orders/status/batch", "post"))
        orders = body["orders"] if isinstance(body.get("orders"), list) else []
        if len(orders) > ORDERS_BATCH_MAX:
            raise _BrevoError(
                400, "out_of_range", f"orders: at most {ORDERS_BATCH_MAX} orders per batch, got {len(orders)}"
            )
        for index, order in enumerate(orders):
            self._check_order_contact(order, f"orders[{index}]")
        historical = body.get("historical", True)  # Brevo's default: historical, no automation triggered
        with self.lock:
            batch_id = next(self._ids["batch"])
            # Each order is kept as parsed from this request: nothing else holds it, so no copy is needed (deep
            # copies of a 100,000-customer backfill's orders took the simulator about 13 s of CPU).
            for order in orders:
                self.orders.append({**order, "historical": historical, "batchId": batch_id})
        return _json_ok({"batchId": batch_id, "count": len(orders)}, 202)

    def _upsert_batch(
        self, store: dict[str, dict[str, Any]], items: list[dict[str, Any]], kind: str, update_enabled: bool
    ) -> tuple[int, int]:
        ids = [item["id"] for item in items]
        repeated = sorted({item_id for item_id in ids if ids.count(item_id) > 1})
        if repeated:
            raise _BrevoError(400, "duplicate_parameter", f"{kind}: duplicate ids in the request: {repeated}")
        created = updated = 0
        with self.lock:
            existing = [item_id for item_id in ids if item_id in store]
            if existing and not update_enabled:
                raise _BrevoError(
                    400,
                    "duplicate_parameter",
                    f"{kind}: ids already exist: {existing}; pass updateEnabled to update them",
                )
            for index, item in enumerate(items):
                if item["id"] not in store and not item.get("name"):
                    raise _BrevoError(
                        400, "missing_parameter", f"{kind}[{index}].name: required to create an item"
                    )
            for item in items:
                record = copy.deepcopy(item)
                if item["id"] in store:
                    store[item["id"]].update(record)
                    updated += 1
                else:
                    store[item["id"]] = record
                    created += 1
        return created, updated

    @staticmethod
    def _check_meta_info(products: list[dict[str, Any]]) -> None:
        for index, product in enumerate(products):
            meta = product.get("metaInfo")
            if isinstance(meta, dict) and len(meta) > PRODUCT_META_MAX_KEYS:
                raise _BrevoError(
                    400, "out_of_range", f"products[{index}].metaInfo: at most {PRODUCT_META_MAX_KEYS} keys"
                )

    async def _create_product(self, request: Request) -> Response:
        body = await self._body(request, ("/products", "post"))
        update_enabled = bool(body.pop("updateEnabled", False))
        self._check_meta_info([body])
        with self.lock:
            if body["id"] in self.products and not update_enabled:
                raise _BrevoError(
                    400,
                    "duplicate_parameter",
                    f"Product {body['id']} already exists; pass updateEnabled to update it",
                )
            exists = body["id"] in self.products
            self._upsert_batch(self.products, [body], "products", True)
            if exists:
                return Response(status_code=204)
            return _json_ok({"id": next(self._ids["product"])}, 201)

    async def _create_products_batch(self, request: Request) -> Response:
        body = await self._body(request, ("/products/batch", "post"))
        products = body.get("products") or []
        if len(products) > PRODUCTS_BATCH_MAX:
            raise _BrevoError(
                400, "out_of_range", f"products: at most {PRODUCTS_BATCH_MAX} per batch, got {len(products)}"
            )
        self._check_meta_info(products)
        created, updated = self._upsert_batch(
            self.products, products, "products", bool(body.get("updateEnabled"))
        )
        return _json_ok({"createdCount": created, "updatedCount": updated}, 201)

    async def _create_categories_batch(self, request: Request) -> Response:
        body = await self._body(request, ("/categories/batch", "post"))
        categories = body.get("categories") or []
        if len(categories) > CATEGORIES_BATCH_MAX:
            raise _BrevoError(
                400,
                "out_of_range",
                f"categories: at most {CATEGORIES_BATCH_MAX} per batch, got {len(categories)}",
            )
        created, updated = self._upsert_batch(
            self.categories, categories, "categories", bool(body.get("updateEnabled"))
        )
        return _json_ok({"createdCount": created, "updatedCount": updated}, 201)

    async def _activate_ecommerce(self, request: Request) -> Response:
        with self.lock:
            self.ecommerce_activated = True
        return Response(status_code=200)

    async def _get_process(self, request: Request) -> Response:
        raw_id = _raw_segment(request, 3)
        with self.lock:
            process = self.processes.get(int(raw_id)) if _is_number(raw_id) else None
            if process is None:
                raise _BrevoError(404, "document_not_found", "Process does not exist")
            return _json_ok(copy.deepcopy(process))

    # ---- control routes (no auth, not recorded) -------------------------------------------------------

    async def _control_state(self, request: Request) -> Response:
        return _json_ok(self.snapshot())

    async def _control_inject(self, request: Request) -> Response:
        body = self._parse_body(await request.body(), None)
        allowed = {"status", "count", "seconds", "path_prefix", "mode"}
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise _BrevoError(
                400, "invalid_parameter", f"unknown fault fields {unknown}; allowed: {sorted(allowed)}"
            )
        try:
            self.inject_fault(**body)
        except (TypeError, ValueError) as exc:
            raise _BrevoError(400, "invalid_parameter", str(exc)) from None
        with self.lock:
            active = len(self._faults)
        return _json_ok({"faults": active}, 201)

    async def _control_clear(self, request: Request) -> Response:
        self.clear_faults()
        return Response(status_code=204)

    async def _control_reset(self, request: Request) -> Response:
        self.reset()
        return Response(status_code=204)


class InProcessTransport(httpx.BaseTransport):
    """A synchronous httpx transport that serves requests from an ASGI app, without opening a port.

    httpx.ASGITransport only works with async clients; sync clients such as brevo-python's ``Brevo`` need
    this. The app runs on a private event-loop thread, started here and stopped by close().
    """

    def __init__(self, app: ASGIApp) -> None:
        self._asgi = httpx.ASGITransport(app=app)
        self._portal_context = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_context.__enter__()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()  # a sync body stream cannot be consumed from the event-loop thread
        status, headers, content = self._portal.call(self._round_trip, request)
        return httpx.Response(status, headers=headers, content=content, request=request)

    async def _round_trip(self, request: httpx.Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        response = await self._asgi.handle_async_request(request)
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return response.status_code, response.headers.raw, content

    def close(self) -> None:
        self._portal_context.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> None:
    """Serve a sandbox on a port, for demos and benchmarks that run in another process."""
    import uvicorn

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", help=f"accepted key (default {DEFAULT_API_KEY})"
    )
    args = parser.parse_args(argv)
    sandbox = BrevoSandbox(api_keys=set(args.api_keys or [DEFAULT_API_KEY]))
    uvicorn.run(sandbox.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
