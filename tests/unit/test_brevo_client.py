"""The Brevo client classifies every answer once, and learns Brevo's budgets from its headers (respx)."""

from __future__ import annotations

import functools
import gc
import weakref

import httpx
import pytest
import respx

from connector.brevo import (
    BrevoAuthFailed,
    BrevoClient,
    BrevoRateLimited,
    BrevoRejected,
    BrevoRetriable,
    Pacer,
    TooLongToWait,
    endpoint_family,
    paced,
)

BASE = "https://brevo.test/v3"


def _client() -> BrevoClient:
    return BrevoClient("k", base_url=BASE, http=httpx.Client(timeout=2))


@pytest.mark.parametrize(("status", "error"), [
    (429, BrevoRateLimited), (500, BrevoRetriable), (503, BrevoRetriable), (425, BrevoRetriable),
    (401, BrevoAuthFailed), (403, BrevoAuthFailed), (402, BrevoAuthFailed), (400, BrevoRejected),
    (404, BrevoRejected),
])
@respx.mock
def test_answers_are_classified_retriable_fatal_for_the_item_or_for_the_shop(status: int, error: type) -> None:
    respx.post(f"{BASE}/events").mock(return_value=httpx.Response(
        status, json={"code": "x", "message": "why"}, headers={"x-sib-ratelimit-reset": "3"}))
    with pytest.raises(error) as raised:
        _client().send_event({"event_name": "e", "identifiers": {"email_id": "a@example.com"}})
    assert raised.value.status == status and "why" in str(raised.value)


@respx.mock
def test_a_timeout_is_retriable() -> None:
    respx.post(f"{BASE}/events").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(BrevoRetriable, match="timed out"):
        _client().send_event({"event_name": "e", "identifiers": {"email_id": "a@example.com"}})


@respx.mock
def test_the_api_key_header_is_sent_and_ext_ids_are_percent_encoded() -> None:
    route = respx.put(url__regex=r".*/contacts/gid%3A%2F%2Fshopify%2FCustomer%2F5\?identifierType=ext_id$").mock(
        return_value=httpx.Response(204))
    _client().update_contact_by_ext_id("gid://shopify/Customer/5", {"attributes": {"EMAIL": "b@example.com"}})
    assert route.called and route.calls[0].request.headers["api-key"] == "k"


@respx.mock
def test_budgets_are_learned_from_x_sib_ratelimit_headers() -> None:
    respx.post(f"{BASE}/events").mock(return_value=httpx.Response(204, headers={
        "x-sib-ratelimit-limit": "10", "x-sib-ratelimit-remaining": "0", "x-sib-ratelimit-reset": "1"}))
    client = _client()
    client.send_event({"event_name": "e", "identifiers": {"email_id": "a@example.com"}})
    assert client.pacer.remaining("events") == 0
    assert 0 < client.pacer.wait_time("events") <= 1


def test_the_endpoint_families_are_brevos_published_buckets() -> None:
    assert endpoint_family("POST", "contacts/import") == "contacts"
    assert endpoint_family("PUT", "contacts/a%40b.c") == "contacts"
    assert endpoint_family("POST", "events") == "events"
    assert endpoint_family("POST", "events/batch") == "other"
    assert endpoint_family("POST", "orders/status") == "orders"
    assert endpoint_family("POST", "orders/status/batch") == "other"
    assert endpoint_family("GET", "account") == "other"


def test_paced_retries_retriable_calls_then_gives_up() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise BrevoRetriable("busy", retry_after=0.01)
        return "ok"

    assert paced(Pacer(), "events", flaky) == "ok" and len(attempts) == 3


def test_paced_does_not_retry_a_refused_item() -> None:
    attempts = []

    def refused() -> None:
        attempts.append(1)
        raise BrevoRejected("bad", status=400)

    with pytest.raises(BrevoRejected):
        paced(Pacer(), "events", refused)
    assert len(attempts) == 1


def test_paced_refuses_to_block_for_a_long_reset() -> None:
    pacer = Pacer()
    pacer.spent("other", 3000)
    with pytest.raises(TooLongToWait):
        paced(pacer, "other", lambda: None)


def test_a_calls_body_is_freed_when_the_call_returns() -> None:
    """Nothing of a call outlives it waiting for the cyclic garbage collector: an import body is megabytes."""

    class Body(list[int]):
        pass

    body = Body(range(10))
    gone = weakref.ref(body)
    collecting = gc.isenabled()
    gc.disable()
    try:
        sent = paced(Pacer(), "contacts", functools.partial(len, body))
        del body
        assert sent == 10 and gone() is None
    finally:
        if collecting:
            gc.enable()


def test_saved_budgets_are_adopted_by_the_next_worker() -> None:
    first = Pacer()
    first.spent("other", 600)
    second = Pacer()
    second.load(first.dump())
    assert second.remaining("other") == 0 and second.wait_time("other") > 500
