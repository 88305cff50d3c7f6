"""Tests that the simulated Brevo answers like the real one: auth, validation, limits, upserts, faults."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import uvicorn

from connector.sandbox.brevo import (
    DEFAULT_API_KEY,
    SPEC_FILE,
    BrevoLimits,
    BrevoSandbox,
    InProcessTransport,
    rate_limit_family,
    request_body_schema,
)


@pytest.fixture
def sandbox() -> BrevoSandbox:
    return BrevoSandbox()


@pytest.fixture
def client(sandbox: BrevoSandbox) -> Iterator[httpx.Client]:
    with httpx.Client(
        transport=InProcessTransport(sandbox.app),
        base_url="http://sandbox",
        headers={"api-key": DEFAULT_API_KEY},
    ) as http:
        yield http


def event(name: str = "order_completed", **identifiers: Any) -> dict[str, Any]:
    return {"event_name": name, "identifiers": identifiers or {"email_id": "jane@example.com"}}


# ---- auth and validation ---------------------------------------------------------------------------------


def test_wrong_or_missing_api_key_is_401_key_not_found(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    wrong = client.get("/v3/account", headers={"api-key": "nope"})
    with httpx.Client(transport=InProcessTransport(sandbox.app), base_url="http://sandbox") as keyless:
        missing = keyless.get("/v3/account")

    for response in (wrong, missing):
        assert response.status_code == 401
        assert response.json() == {"code": "unauthorized", "message": "Key not found"}
        assert "x-sib-ratelimit-limit" in response.headers
    assert [call.status for call in sandbox.calls] == [401, 401]


def test_event_without_identifiers_is_400_naming_the_field(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    response = client.post("/v3/events", json={"event_name": "cart_updated"})

    assert response.status_code == 400
    assert response.json()["code"] == "invalid_parameter"
    assert "identifiers" in response.json()["message"]
    assert sandbox.events == []


def test_contact_with_non_object_attributes_is_400_naming_the_field(client: httpx.Client) -> None:
    response = client.post("/v3/contacts", json={"email": "jane@example.com", "attributes": ["FIRSTNAME"]})

    assert response.status_code == 400
    assert response.json()["message"].startswith("attributes: ")
    assert "not of type 'object'" in response.json()["message"]


def test_validation_can_be_turned_off() -> None:
    lax = BrevoSandbox(validate=False)
    with httpx.Client(transport=InProcessTransport(lax.app), base_url="http://sandbox") as http:
        body = {"email": "jane@example.com", "attributes": {"FIRSTNAME": None}, "emailBlacklisted": False}
        response = http.post("/v3/contacts", json=body, headers={"api-key": DEFAULT_API_KEY})

    assert response.status_code == 201


def test_event_properties_accept_floats_and_booleans_as_brevo_documents(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    body = {**event(), "event_properties": {"total": 19.9, "paid": True, "items": [{"sku": "A"}]}}

    assert client.post("/v3/events", json=body).status_code == 204
    assert sandbox.events[0]["event_properties"]["total"] == 19.9


def test_contact_properties_stay_string_or_integer_as_the_spec_says(client: httpx.Client) -> None:
    body = {**event(), "contact_properties": {"TOTAL_SPENT": 19.9}}

    response = client.post("/v3/events", json=body)

    assert response.status_code == 400
    assert "contact_properties.TOTAL_SPENT" in response.json()["message"]


def test_unknown_path_is_404_and_wrong_method_is_405(client: httpx.Client) -> None:
    unknown = client.get("/v3/nothing/here")
    wrong_method = client.get("/v3/events")

    assert unknown.status_code == 404 and unknown.json()["code"] == "document_not_found"
    assert wrong_method.status_code == 405 and wrong_method.json()["code"] == "method_not_allowed"


# ---- rate limits -----------------------------------------------------------------------------------------


def test_brevo_base_tier_limits_are_the_default() -> None:
    limits = BrevoLimits()
    assert (limits.contacts, limits.events, limits.orders, limits.products, limits.other) == (
        (10, 1.0), (10, 1.0), (5, 1.0), (2, 1.0), (100, 3600.0))


def test_eleventh_contacts_call_in_the_window_is_429_and_recorded_as_rejected() -> None:
    # Ten calls per window as on Brevo's base tier; a 30 s window keeps the test independent of machine speed.
    sandbox = BrevoSandbox(limits=BrevoLimits(contacts=(10, 30.0)))
    with httpx.Client(transport=InProcessTransport(sandbox.app), base_url="http://sandbox",
                      headers={"api-key": DEFAULT_API_KEY}) as client:
        responses = [client.get("/v3/contacts/attributes") for _ in range(11)]

        assert [r.status_code for r in responses] == [200] * 10 + [429]
        assert [r.headers["x-sib-ratelimit-remaining"] for r in responses[:3]] == ["9", "8", "7"]
        refused = responses[-1]
        assert refused.json()["code"] == "too_many_requests"
        assert refused.headers["x-sib-ratelimit-limit"] == "10"
        assert refused.headers["x-sib-ratelimit-remaining"] == "0"
        assert 0 <= int(refused.headers["x-sib-ratelimit-reset"]) <= 30
        assert "retry-after" not in refused.headers
        assert sandbox.calls[-1].status == 429 and sandbox.calls[-1].family == "contacts"
        # Other families keep their own budget.
        assert client.post("/v3/events", json=event()).status_code == 204


def test_custom_limits_change_the_threshold_and_window() -> None:
    sandbox = BrevoSandbox(limits=BrevoLimits(contacts=(3, 60.0)))
    with httpx.Client(
        transport=InProcessTransport(sandbox.app),
        base_url="http://sandbox",
        headers={"api-key": DEFAULT_API_KEY},
    ) as http:
        statuses = [http.get("/v3/contacts/attributes").status_code for _ in range(4)]
        last = http.get("/v3/contacts/attributes")

    assert statuses == [200, 200, 200, 429]
    assert 58 <= int(last.headers["x-sib-ratelimit-reset"]) <= 60
    assert sum(call.status == 429 for call in sandbox.calls) == 2


def test_batch_endpoints_fall_in_the_other_family() -> None:
    assert rate_limit_family("POST", "/v3/events") == "events"
    assert rate_limit_family("POST", "/v3/events/batch") == "other"
    assert rate_limit_family("POST", "/v3/orders/status/batch") == "other"
    assert rate_limit_family("POST", "/v3/products") == "products"
    assert rate_limit_family("POST", "/v3/contacts/import") == "contacts"
    assert rate_limit_family("GET", "/v3/account") == "other"


# ---- contacts --------------------------------------------------------------------------------------------


def test_duplicate_contact_is_400_unless_update_enabled_then_204(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    created = client.post(
        "/v3/contacts", json={"email": "Jane@Example.com", "attributes": {"FIRSTNAME": "Jane"}}
    )
    duplicate = client.post("/v3/contacts", json={"email": "jane@example.com"})
    upsert = client.post(
        "/v3/contacts",
        json={"email": "jane@example.com", "attributes": {"LASTNAME": "Doe"}, "updateEnabled": True},
    )

    assert created.status_code == 201 and created.json() == {"id": 1}
    assert duplicate.status_code == 400
    assert duplicate.json()["code"] == "duplicate_parameter"
    assert duplicate.json()["metadata"] == {"duplicate_identifiers": ["email"]}
    assert upsert.status_code == 204
    contact = sandbox.find_contact(email="jane@example.com")
    assert contact is not None
    assert contact["attributes"] == {"FIRSTNAME": "Jane", "LASTNAME": "Doe"}


def test_contact_is_found_by_ext_id_after_its_email_changes(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    ext_id = "shopify/42 #1"
    client.post("/v3/contacts", json={"email": "old@example.com", "ext_id": ext_id, "emailBlacklisted": True})
    path = "/v3/contacts/" + "shopify%2F42%20%231"

    changed = client.put(
        path,
        params={"identifierType": "ext_id"},
        json={"attributes": {"EMAIL": "new@example.com", "SMS": "+33612345678"}},
    )
    fetched = client.get(path, params={"identifierType": "ext_id"})

    assert changed.status_code == 204
    assert fetched.json()["email"] == "new@example.com"
    assert fetched.json()["attributes"]["EXT_ID"] == ext_id
    assert sandbox.find_contact(email="old@example.com") is None
    contact = sandbox.find_contact(ext_id=ext_id, sms="0033612345678")
    assert contact is not None and contact["email"] == "new@example.com"
    assert contact["emailBlacklisted"] is False  # a new address resubscribes, as Brevo documents
    assert client.get("/v3/contacts/old%40example.com").status_code == 404


def test_changing_email_to_another_contacts_email_is_duplicate(client: httpx.Client) -> None:
    client.post("/v3/contacts", json={"email": "a@example.com"})
    client.post("/v3/contacts", json={"email": "b@example.com"})

    response = client.put("/v3/contacts/b%40example.com", json={"attributes": {"EMAIL": "a@example.com"}})

    assert response.status_code == 400
    assert response.json()["code"] == "duplicate_parameter"


def test_unknown_contact_is_404_and_identifier_type_is_required_for_ext_ids(client: httpx.Client) -> None:
    client.post("/v3/contacts", json={"ext_id": "c-1"})

    assert client.get("/v3/contacts/c-1").status_code == 404  # no identifierType: read as a contact id
    assert client.get("/v3/contacts/c-1", params={"identifierType": "ext_id"}).status_code == 200
    assert client.put("/v3/contacts/99", json={"attributes": {}}).json()["code"] == "document_not_found"
    assert client.delete("/v3/contacts/c-1", params={"identifierType": "ext_id"}).status_code == 204
    assert client.get("/v3/contacts/1").status_code == 404


def test_unknown_attributes_are_ignored_and_recorded(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    client.post(
        "/v3/contacts",
        json={"email": "jane@example.com", "attributes": {"FIRSTNAME": "Jane", "TIER": "gold"}},
    )
    created = client.post("/v3/contacts/attributes/normal/TIER", json={"type": "text"})
    again = client.post("/v3/contacts/attributes/normal/TIER", json={"type": "text"})
    client.post(
        "/v3/contacts",
        json={"email": "jane@example.com", "attributes": {"TIER": "gold"}, "updateEnabled": True},
    )

    assert sandbox.ignored_attributes == {"TIER"}
    assert created.status_code == 201
    assert again.status_code == 400 and again.json()["message"] == "Attribute name must be unique"
    contact = sandbox.find_contact(email="jane@example.com")
    assert contact is not None and contact["attributes"] == {"FIRSTNAME": "Jane", "TIER": "gold"}
    names = {item["name"] for item in client.get("/v3/contacts/attributes").json()["attributes"]}
    assert {"FIRSTNAME", "LASTNAME", "SMS", "EMAIL", "EXT_ID", "TIER"} <= names


def test_wrong_type_attribute_values_are_dropped_silently(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    client.post("/v3/contacts/attributes/normal/BIRTHDAY", json={"type": "date"})

    response = client.post(
        "/v3/contacts", json={"email": "jane@example.com", "attributes": {"BIRTHDAY": "11/02/1989"}}
    )

    assert response.status_code == 201
    assert sandbox.contacts[1]["attributes"] == {}
    assert sandbox.ignored_values == [{"attribute": "BIRTHDAY", "value": "11/02/1989", "contact_id": 1}]


def test_lists_folders_and_adding_contacts_to_a_list(client: httpx.Client) -> None:
    folder = client.post("/v3/contacts/folders", json={"name": "Shopify"}).json()["id"]
    list_id = client.post("/v3/contacts/lists", json={"name": "Customers", "folderId": folder}).json()["id"]
    client.post("/v3/contacts", json={"email": "jane@example.com"})

    added = client.post(
        f"/v3/contacts/lists/{list_id}/contacts/add", json={"emails": ["jane@example.com", "x@y.z"]}
    )
    too_many = client.post(f"/v3/contacts/lists/{list_id}/contacts/add", json={"ids": list(range(1, 152))})
    lists = client.get("/v3/contacts/lists").json()

    assert added.status_code == 201
    assert added.json() == {"contacts": {"success": ["jane@example.com"], "failure": ["x@y.z"]}}
    assert too_many.status_code == 400
    assert lists["count"] == 2
    assert {"id": list_id, "name": "Customers", "folderId": folder, "uniqueSubscribers": 1}.items() <= lists[
        "lists"
    ][0].items()
    assert client.post("/v3/contacts/lists/999/contacts/add", json={"ids": [1]}).status_code == 404


# ---- import ----------------------------------------------------------------------------------------------


def test_import_applies_rows_and_reports_a_completed_process(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    client.post("/v3/contacts", json={"ext_id": "c-2", "attributes": {"FIRSTNAME": "Old"}})
    body = {
        "jsonBody": [
            {
                "email": "jane@example.com",
                "attributes": {"FIRSTNAME": "Jane", "SMS": "+33611111111", "NOPE": 1},
            },
            {"email": "joe@example.com", "attributes": {"EXT_ID": "c-2", "FIRSTNAME": "Joe"}},
            {"attributes": {"SMS": "0033622222222", "LASTNAME": "Phone"}},
        ],
        "listIds": [2],
        "smsBlacklist": True,
    }

    response = client.post("/v3/contacts/import", json=body)
    process = client.get(f"/v3/processes/{response.json()['processId']}").json()

    assert response.status_code == 202
    assert process["status"] == "completed" and process["name"] == "IMPORTUSER"
    assert process["info"]["import"]["created_contacts"] == 2
    assert process["info"]["import"]["updated_contacts"] == 1
    joe = sandbox.find_contact(ext_id="c-2")
    assert joe is not None and joe["email"] == "joe@example.com" and joe["attributes"]["FIRSTNAME"] == "Joe"
    phone_only = sandbox.find_contact(sms="+33622222222")
    assert phone_only is not None and phone_only["listIds"] == {2} and phone_only["smsBlacklisted"] is True
    assert "NOPE" in sandbox.ignored_attributes


def test_import_over_10_mb_is_400(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    row = {"email": "someone@example.com", "attributes": {"FIRSTNAME": "x" * 1000}}
    body = json.dumps({"jsonBody": [row] * 10_500, "listIds": [2]})
    assert len(body.encode()) > 10_000_000

    response = client.post("/v3/contacts/import", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert "10 MB" in response.json()["message"]
    assert sandbox.contacts == {}


def test_import_needs_list_ids_or_new_list(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    rows = [{"email": "jane@example.com"}]

    missing = client.post("/v3/contacts/import", json={"jsonBody": rows})
    new_list = client.post(
        "/v3/contacts/import", json={"jsonBody": rows, "newList": {"listName": "New", "folderId": 1}}
    )

    assert missing.status_code == 400 and missing.json()["code"] == "missing_parameter"
    assert new_list.status_code == 202
    contact = sandbox.find_contact(email="jane@example.com")
    assert contact is not None and contact["listIds"] == {3}


# ---- events ----------------------------------------------------------------------------------------------


def test_events_are_stored_and_update_or_create_their_contact(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    body = {
        **event(email_id="jane@example.com"),
        "contact_properties": {"FIRSTNAME": "Jane"},
        "event_properties": {"order_id": "1001"},
        "event_date": "2026-03-01T10:00:00+01:00",
    }

    response = client.post("/v3/events", json=body)
    bad_name = client.post("/v3/events", json=event("order completed"))

    assert response.status_code == 204
    assert sandbox.events == [body]
    contact = sandbox.find_contact(email="jane@example.com")
    assert contact is not None and contact["attributes"] == {"FIRSTNAME": "Jane"}
    assert bad_name.status_code == 400 and "event_name" in bad_name.json()["message"]


def test_events_batch_validates_each_item_and_names_the_bad_index(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    good = event(ext_id="c-1")
    bad = {"event_name": "cart_updated"}

    refused = client.post("/v3/events/batch", json={"events": [good, bad]})
    accepted = client.post("/v3/events/batch", json={"events": [good, good]})
    empty = client.post("/v3/events/batch", json={"events": []})

    assert refused.status_code == 400
    assert refused.json()["message"].startswith("events[1]")
    assert "identifiers" in refused.json()["message"]
    assert accepted.status_code == 202 and accepted.json()["count"] == 2
    assert empty.status_code == 400
    assert len(sandbox.events) == 2


def test_events_batch_partial_fault_is_207_with_first_half_failed(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    sandbox.inject_fault(mode="partial")
    events = [event(email_id=f"c{i}@example.com") for i in range(4)]

    response = client.post("/v3/events/batch", json={"events": events})
    after = client.post("/v3/events/batch", json={"events": events[:1]})

    assert response.status_code == 207
    body = response.json()
    assert body["status"] == "partial_success"
    assert (body["total_events"], body["successful_events"], body["failed_events"]) == (4, 2, 2)
    assert body["errors"][0]["eventIndex"] == [0, 1]
    assert sandbox.events[:2] == events[2:]
    assert after.status_code == 202


# ---- faults ----------------------------------------------------------------------------------------------


def test_injected_503_twice_then_recovery(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    sandbox.inject_fault(status=503, count=2, path_prefix="/v3/contacts")

    statuses = [client.post("/v3/contacts", json={"email": "jane@example.com"}).status_code for _ in range(3)]

    assert statuses == [503, 503, 201]
    assert client.get("/v3/account").status_code == 200
    assert [call.status for call in sandbox.calls] == [503, 503, 201, 200]
    assert len(sandbox.contacts) == 1


def test_timed_fault_and_http_control_routes(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    assert client.post("/_sandbox/faults", json={"status": 429, "seconds": 30}).status_code == 201
    throttled = client.post("/v3/events", json=event())
    assert client.delete("/_sandbox/faults").status_code == 204
    recovered = client.post("/v3/events", json=event())
    state = client.get("/_sandbox/state").json()

    assert throttled.status_code == 429 and throttled.headers["x-sib-ratelimit-remaining"] == "0"
    assert recovered.status_code == 204
    assert len(state["events"]) == 1 and state["calls"] == {"/v3/events": 2}
    assert client.post("/_sandbox/faults", json={"mode": "bogus"}).status_code == 400
    assert client.post("/_sandbox/reset").status_code == 204
    assert sandbox.events == [] and sandbox.calls == []


@pytest.fixture
def served(sandbox: BrevoSandbox) -> Iterator[str]:
    """The sandbox on a real loopback port (needed where the client's own timeout matters)."""
    server = uvicorn.Server(uvicorn.Config(sandbox.app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def test_timeout_fault_stalls_until_the_client_gives_up(served: str, sandbox: BrevoSandbox) -> None:
    sandbox.inject_fault(mode="timeout")
    started = time.monotonic()

    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{served}/v3/events", json=event(), headers={"api-key": DEFAULT_API_KEY}, timeout=0.3)
    deadline = time.monotonic() + 2
    while not sandbox.calls and time.monotonic() < deadline:
        time.sleep(0.01)

    assert time.monotonic() - started < 2
    assert sandbox.calls[0].status == 499
    assert sandbox.events == []
    ok = httpx.post(f"{served}/v3/events", json=event(), headers={"api-key": DEFAULT_API_KEY})
    assert ok.status_code == 204


# ---- ecommerce -------------------------------------------------------------------------------------------


def product(product_id: str) -> dict[str, Any]:
    return {"id": product_id, "name": f"Product {product_id}", "price": 9.5}


def test_products_batch_limits_duplicates_and_update_enabled(
    client: httpx.Client, sandbox: BrevoSandbox
) -> None:
    too_many = client.post("/v3/products/batch", json={"products": [product(str(i)) for i in range(101)]})
    repeated = client.post("/v3/products/batch", json={"products": [product("1"), product("1")]})
    created = client.post("/v3/products/batch", json={"products": [product("1"), product("2")]})
    existing = client.post("/v3/products/batch", json={"products": [product("2"), product("3")]})
    updated = client.post(
        "/v3/products/batch", json={"products": [product("2"), product("3")], "updateEnabled": True}
    )

    assert too_many.status_code == 400 and "100" in too_many.json()["message"]
    assert repeated.status_code == 400
    assert created.status_code == 201 and created.json() == {"createdCount": 2, "updatedCount": 0}
    assert existing.status_code == 400
    assert updated.json() == {"createdCount": 1, "updatedCount": 1}
    assert sorted(sandbox.products) == ["1", "2", "3"]


def test_orders_batch_keeps_the_historical_flag(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    order = {
        "id": "1001",
        "createdAt": "2026-03-01T10:00:00Z",
        "updatedAt": "2026-03-01T10:00:00Z",
        "status": "paid",
        "amount": 19.9,
        "products": [{"productId": "1", "quantity": 1, "price": 19.9}],
        "identifiers": {"ext_id": "c-1"},
    }

    default = client.post("/v3/orders/status/batch", json={"orders": [order]})
    live = client.post("/v3/orders/status/batch", json={"orders": [order], "historical": False})
    single = client.post("/v3/orders/status", json=order)
    too_many = client.post("/v3/orders/status/batch", json={"orders": [order] * 1001})
    anonymous = client.post("/v3/orders/status", json={k: v for k, v in order.items() if k != "identifiers"})

    assert default.status_code == 202 and default.json() == {"batchId": 1, "count": 1}
    assert live.status_code == 202 and single.status_code == 204
    assert [o["historical"] for o in sandbox.orders] == [True, False, False]
    assert too_many.status_code == 400
    assert anonymous.status_code == 400


def test_ecommerce_activation_and_categories(client: httpx.Client, sandbox: BrevoSandbox) -> None:
    assert client.post("/v3/ecommerce/activate").status_code == 200
    created = client.post("/v3/categories/batch", json={"categories": [{"id": "shoes", "name": "Shoes"}]})
    nameless = client.post("/v3/categories/batch", json={"categories": [{"id": "hats"}]})

    assert sandbox.ecommerce_activated is True
    assert created.status_code == 201 and created.json() == {"createdCount": 1, "updatedCount": 0}
    assert nameless.status_code == 400


# ---- the official SDK, the spec, construction cost ---------------------------------------------------------


def test_brevo_python_sdk_creates_a_contact_and_an_event(sandbox: BrevoSandbox) -> None:
    from brevo import Brevo

    with httpx.Client(transport=InProcessTransport(sandbox.app)) as http:
        sdk = Brevo(api_key=DEFAULT_API_KEY, base_url="http://sandbox/v3", max_retries=0, httpx_client=http)
        created = sdk.contacts.create_contact(email="sdk@example.com", attributes={"FIRSTNAME": "Sdk"})
        sdk.event.create_event(
            event_name="cart_updated",
            identifiers={"email_id": "sdk@example.com"},
            event_properties={"total": 12},
        )

    assert created.id == 1
    assert sandbox.find_contact(email="sdk@example.com") is not None
    assert sandbox.events[0]["event_name"] == "cart_updated"


def test_vendored_spec_is_the_one_provenance_names() -> None:
    digest = hashlib.sha256(SPEC_FILE.read_bytes()).hexdigest()

    assert digest in (SPEC_FILE.parent / "PROVENANCE.md").read_text()


def test_extracted_schemas_are_valid_draft4() -> None:
    import jsonschema

    for path in ("/contacts", "/events", "/contacts/import", "/orders/status/batch", "/products/batch"):
        jsonschema.Draft4Validator.check_schema(request_body_schema(path, "post"))


def test_constructing_a_sandbox_is_fast_after_the_first() -> None:
    BrevoSandbox()
    started = time.perf_counter()
    BrevoSandbox()

    assert time.perf_counter() - started < 0.2
