"""Our thin wrapper over the Brevo SDK: error classification, rate-limit pacing from x-sib-ratelimit-* headers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from brevo import Brevo
from brevo.core.api_error import ApiError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from connector import jsontext

T = TypeVar("T")

DEFAULT_TIMEOUT = 20.0


class BrevoError(Exception):
    """A Brevo call failed."""

    def __init__(self, message: str, *, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class BrevoRetriable(BrevoError):
    """Brevo is slow, down or busy (5xx, 425, timeout): the same call may succeed later."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class BrevoRateLimited(BrevoRetriable):
    """Brevo answered 429: the family's budget is spent until x-sib-ratelimit-reset."""


class BrevoRejected(BrevoError):
    """Brevo refused this item (4xx validation): retrying it as is cannot help."""


class BrevoAuthFailed(BrevoError):
    """The API key is wrong, revoked or lacks permission (401/403/402): the shop must be paused."""


def endpoint_family(method: str, path: str) -> str:
    """Brevo's published rate-limit buckets (DESIGN 8). The batch endpoints are in the 100/hour bucket."""
    p = path.split("?", 1)[0].rstrip("/")
    if p.endswith("/contacts") or "/contacts/" in p or p == "contacts" or p.startswith("contacts/"):
        return "contacts"
    if p.endswith("/events") or p == "events":
        return "events"
    if p.endswith("/orders/status") or p == "orders/status":
        return "orders"
    if p.endswith("/products") or p == "products":
        return "products"
    return "other"  # the batch endpoints (events, orders, products, categories) and account set-up


@dataclass
class FamilyBudget:
    limit: int | None = None
    remaining: int | None = None
    reset_at: float = 0.0  # monotonic time when the window frees


@dataclass
class Pacer:
    """What Brevo told us about each rate-limit family, so we wait instead of collecting 429s.

    Wall-clock based, so that it can be saved with the shop and read back by whichever worker leases
    the shop next (DESIGN 4: pacing state lives in our tables).
    """

    clock: Callable[[], float] = time.time
    budgets: dict[str, FamilyBudget] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, family: str, headers: Mapping[str, str]) -> None:
        lower = {k.lower(): v for k, v in headers.items()}
        if "x-sib-ratelimit-remaining" not in lower:
            return
        try:
            remaining = int(float(lower["x-sib-ratelimit-remaining"]))
            reset = float(lower.get("x-sib-ratelimit-reset", "1"))
            limit = int(float(lower["x-sib-ratelimit-limit"])) if "x-sib-ratelimit-limit" in lower else None
        except ValueError:
            return
        with self.lock:
            self.budgets[family] = FamilyBudget(limit=limit, remaining=remaining, reset_at=self.clock() + reset)

    def spent(self, family: str, reset_after: float) -> None:
        with self.lock:
            b = self.budgets.setdefault(family, FamilyBudget())
            b.remaining, b.reset_at = 0, self.clock() + max(reset_after, 0.0)

    def remaining(self, family: str) -> int | None:
        """Calls left in the current window, None when unknown (no call made yet)."""
        with self.lock:
            b = self.budgets.get(family)
            if b is None or b.remaining is None:
                return None
            if self.clock() >= b.reset_at:
                return b.limit  # the window has rolled over
            return b.remaining

    def wait_time(self, family: str) -> float:
        with self.lock:
            b = self.budgets.get(family)
            if b is None or b.remaining is None or b.remaining > 0:
                return 0.0
            return max(b.reset_at - self.clock(), 0.0)

    def dump(self) -> dict[str, Any]:
        with self.lock:
            return {f: {"limit": b.limit, "remaining": b.remaining, "reset_at": b.reset_at}
                    for f, b in self.budgets.items()}

    def load(self, saved: Mapping[str, Any] | None) -> None:
        """Adopt saved budgets that are still current (a newer observation of our own wins)."""
        now = self.clock()
        with self.lock:
            for family, b in (saved or {}).items():
                if not isinstance(b, Mapping) or not isinstance(b.get("reset_at"), (int, float)) \
                        or float(b["reset_at"]) <= now:
                    continue
                mine = self.budgets.get(family)
                if mine is None or mine.reset_at < float(b["reset_at"]):
                    self.budgets[family] = FamilyBudget(limit=b.get("limit"), remaining=b.get("remaining"),
                                                        reset_at=float(b["reset_at"]))

    def snapshot(self) -> dict[str, Any]:
        now = self.clock()
        with self.lock:
            return {f: {"limit": b.limit, "remaining": b.remaining, "reset_in": round(max(b.reset_at - now, 0), 3)}
                    for f, b in self.budgets.items()}


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    headers: Mapping[str, str]


class BrevoClient:
    """One shop's Brevo account. Every call is classified; none is retried here (the pusher decides)."""

    def __init__(self, api_key: str, *, base_url: str, http: httpx.Client | None = None,
                 pacer: Pacer | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http or httpx.Client(timeout=timeout)
        # The SDK retries POSTs on its own and ignores x-sib-ratelimit-reset: never let it retry.
        self.sdk = Brevo(api_key=api_key, base_url=self.base_url, max_retries=0, httpx_client=self.http,
                         timeout=timeout)
        self.pacer = pacer or Pacer()
        self.calls = 0

    # --- the one place where responses are classified -----------------------------------------

    def _call(self, method: str, path: str, fn: Callable[[], Any]) -> Reply:
        family = endpoint_family(method, path)
        self.calls += 1
        try:
            raw = fn()
        except ApiError as exc:
            headers = dict(exc.headers or {})
            self.pacer.observe(family, headers)
            raise classify(exc.status_code, exc.body, headers, f"{method} {path}") from None
        except httpx.TimeoutException as exc:
            raise BrevoRetriable(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise BrevoRetriable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        headers = dict(raw.headers)
        self.pacer.observe(family, headers)
        return Reply(status=200, body=raw.data, headers=headers)

    def _request(self, method: str, path: str, *, json: Any = None, params: Mapping[str, str] | None = None) -> Reply:
        """Plain JSON call, for bodies the SDK's models would alter (plain dicts for batches, see DESIGN 1)."""
        family = endpoint_family(method, path)
        self.calls += 1
        try:
            headers = {"api-key": self._api_key, "accept": "application/json"}
            if json is not None:  # encoded with orjson: an import's body runs to 8 MB
                headers["content-type"] = "application/json"
            response = self.http.request(method, f"{self.base_url}/{path}", params=params, headers=headers,
                                         content=jsontext.dumpb(json) if json is not None else None)
        except httpx.TimeoutException as exc:
            raise BrevoRetriable(f"{method} {path}: timed out ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise BrevoRetriable(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        self.pacer.observe(family, response.headers)
        try:
            body = response.json() if response.content else None
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise classify(response.status_code, body, dict(response.headers), f"{method} {path}")
        return Reply(status=response.status_code, body=body, headers=dict(response.headers))

    @property
    def _api_key(self) -> str:
        return str(self.sdk._client_wrapper.api_key)

    # --- account set-up -------------------------------------------------------------------------

    def get_account(self) -> Reply:
        return self._call("GET", "account", lambda: self.sdk.account.with_raw_response.get_account())

    def attribute_names(self) -> set[str]:
        reply = self._request("GET", "contacts/attributes")
        return {str(a.get("name", "")).upper() for a in (reply.body or {}).get("attributes", [])}

    def create_attribute(self, name: str, attribute_type: str, options: Sequence[str] | None = None) -> None:
        body: dict[str, Any] = {"type": attribute_type}
        if attribute_type == "multiple-choice":
            body["multiCategoryOptions"] = list(options or [])
        self._request("POST", f"contacts/attributes/normal/{quote(name, safe='')}", json=body)

    def update_attribute_options(self, name: str, options: Sequence[str]) -> None:
        """Replace a multiple-choice attribute's options (values outside them are refused by Brevo)."""
        self._request("PUT", f"contacts/attributes/normal/{quote(name, safe='')}",
                      json={"multiCategoryOptions": list(options)})

    def create_folder(self, name: str) -> int:
        reply = self._request("POST", "contacts/folders", json={"name": name})
        return int(reply.body["id"])

    def create_list(self, name: str, folder_id: int) -> int:
        reply = self._request("POST", "contacts/lists", json={"name": name, "folderId": folder_id})
        return int(reply.body["id"])

    # --- contacts -------------------------------------------------------------------------------

    def upsert_contact(self, body: Mapping[str, Any], list_ids: Sequence[int] = ()) -> Reply:
        payload = dict(body)
        payload["updateEnabled"] = True
        if list_ids:
            payload["listIds"] = list(list_ids)
        return self._request("POST", "contacts", json=payload)

    def update_contact_by_ext_id(self, ext_id: str, body: Mapping[str, Any]) -> Reply:
        payload = {k: v for k, v in body.items() if k not in ("email", "ext_id")}
        # The SDK does not percent-encode path identifiers: a GID has '/' and ':' in it.
        return self._request("PUT", f"contacts/{quote(ext_id, safe='')}", json=payload,
                             params={"identifierType": "ext_id"})

    def unlink_lists(self, identifier: str, list_ids: Sequence[int], *, by: str = "email_id") -> Reply:
        return self._request("PUT", f"contacts/{quote(identifier, safe='')}", json={"unlinkListIds": list(list_ids)},
                             params={"identifierType": by})

    def delete_contact(self, identifier: str, *, by: str) -> Reply:
        return self._request("DELETE", f"contacts/{quote(identifier, safe='')}", params={"identifierType": by})

    def anonymise_contact(self, identifier: str, *, by: str, alias: str, attributes: Sequence[str]) -> Reply:
        """Keep the contact's figures, drop who they are: a placeholder address in place of the email, the
        named attributes emptied, both channels blacklisted so that no campaign reaches the placeholder."""
        body = {"attributes": {"EMAIL": f"{alias}@anonymised.invalid", **{name: "" for name in attributes}},
                "ext_id": alias, "emailBlacklisted": True, "smsBlacklisted": True}
        return self._request("PUT", f"contacts/{quote(identifier, safe='')}", json=body,
                             params={"identifierType": by})

    def import_contacts(self, rows: Sequence[Mapping[str, Any]], list_id: int, *, email_blacklist: bool = False,
                        sms_blacklist: bool = False) -> Reply:
        """Rows into the list; the blacklist flags, when set, opt every row of the import out."""
        body: dict[str, Any] = {"jsonBody": list(rows), "listIds": [list_id], "updateExistingContacts": True,
                                "emptyContactsAttributes": True, "disableNotification": True}
        if email_blacklist:
            body["emailBlacklist"] = True
        if sms_blacklist:
            body["smsBlacklist"] = True
        return self._request("POST", "contacts/import", json=body)

    def list_members(self, list_id: int, *, limit: int = 500, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """One page of a list's contacts (oldest first) and how many the list holds."""
        reply = self._request("GET", f"contacts/lists/{list_id}/contacts",
                              params={"limit": str(limit), "offset": str(offset), "sort": "asc"})
        body = reply.body if isinstance(reply.body, dict) else {}
        return list(body.get("contacts") or []), int(body.get("count") or 0)

    def order_count(self) -> int:
        """How many ecommerce orders the account holds."""
        reply = self._request("GET", "orders", params={"limit": "1", "offset": "0"})
        return int((reply.body or {}).get("count") or 0) if isinstance(reply.body, dict) else 0

    def import_process(self, process_id: int) -> tuple[str, int]:
        """An import's status and how many of its rows Brevo skipped (invalid emails, identifiers that belong
        to another contact)."""
        reply = self._request("GET", f"processes/{process_id}")
        body = reply.body if isinstance(reply.body, dict) else {}
        counts = (body.get("info") or {}).get("import") or {}
        skipped = sum(int(v or 0) for k, v in counts.items() if k == "invalid_emails" or k.startswith("duplicate_"))
        return str(body.get("status") or "unknown"), skipped

    # --- events ---------------------------------------------------------------------------------

    def send_event(self, body: Mapping[str, Any]) -> Reply:
        return self._request("POST", "events", json=dict(body))

    def send_events_batch(self, bodies: Sequence[Mapping[str, Any]]) -> Reply:
        return self._request("POST", "events/batch", json={"events": list(bodies)})

    # --- ecommerce ------------------------------------------------------------------------------

    def upsert_products(self, products: Sequence[Mapping[str, Any]]) -> Reply:
        return self._request("POST", "products/batch", json={"products": list(products), "updateEnabled": True})

    def upsert_product(self, product: Mapping[str, Any]) -> Reply:
        return self._request("POST", "products", json={**product, "updateEnabled": True})

    def upsert_categories(self, categories: Sequence[Mapping[str, Any]]) -> Reply:
        return self._request("POST", "categories/batch", json={"categories": list(categories),
                                                               "updateEnabled": True})

    def create_order(self, order: Mapping[str, Any]) -> Reply:
        return self._request("POST", "orders/status", json=dict(order))

    def create_orders(self, orders: Sequence[Mapping[str, Any]], *, historical: bool) -> Reply:
        """Live orders in a batch say `historical: false` so that Brevo's automations see them."""
        return self._request("POST", "orders/status/batch", json={"orders": list(orders), "historical": historical})

    def close(self) -> None:
        self.http.close()


def classify(status: int | None, body: Any, headers: Mapping[str, str], what: str) -> BrevoError:
    message = body.get("message") if isinstance(body, Mapping) else (str(body)[:300] if body else "")
    code = body.get("code") if isinstance(body, Mapping) else None
    text = f"{what}: Brevo answered {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    lower = {k.lower(): v for k, v in headers.items()}
    reset: float | None = None
    if "x-sib-ratelimit-reset" in lower:
        try:
            reset = float(lower["x-sib-ratelimit-reset"])
        except ValueError:
            reset = None
    if status == 429:
        return BrevoRateLimited(text, status=status, body=body, retry_after=reset)
    if status is None or status >= 500 or status in (408, 409, 425):
        return BrevoRetriable(text, status=status, body=body, retry_after=reset)
    if status in (401, 402, 403):
        return BrevoAuthFailed(text, status=status, body=body)
    return BrevoRejected(text, status=status, body=body)


class TooLongToWait(BrevoRetriable):
    """Brevo's budget frees later than we are willing to block a worker for: reschedule instead."""


def paced(pacer: Pacer, family: str, call: Callable[[], T], *, max_inline_wait: float = 2.0,
          attempts: int = 3) -> T:
    """One Brevo call: wait for the family's budget if that is short; retry briefly if it is retriable.

    Only calls that the client classified as retriable are retried (tenacity), honouring Brevo's own
    x-sib-ratelimit-reset; a longer wait raises TooLongToWait so the caller can reschedule the work.
    """

    def attempt() -> T:
        wait = pacer.wait_time(family)
        if wait > max_inline_wait:
            raise TooLongToWait(f"Brevo's {family} budget is spent for {wait:.0f} s", retry_after=wait)
        if wait > 0:
            time.sleep(wait)
        try:
            return call()
        except BrevoRetriable as exc:
            if exc.retry_after is not None and exc.retry_after > max_inline_wait:
                raise TooLongToWait(str(exc), retry_after=exc.retry_after) from None
            raise

    def backoff(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        after = getattr(exc, "retry_after", None)
        delay = after if after is not None else 0.2 * (2 ** (state.attempt_number - 1))
        return min(max(delay, 0.05), max_inline_wait)

    # Called through a `Retrying`, not wrapped by tenacity's `retry` decorator: the function that decorator makes
    # refers to itself, and so to the call and its body (an import of 8 MB, a batch of 1,000 orders), which then
    # outlived every call until the garbage collector found the cycle. (A call that fails still leaves its body
    # to the collector, through the traceback its error keeps.)
    retrying = Retrying(reraise=True, stop=stop_after_attempt(attempts), wait=backoff,
                        retry=retry_if_exception(lambda e: isinstance(e, BrevoRetriable)
                                                 and not isinstance(e, TooLongToWait)))
    return retrying(attempt)
