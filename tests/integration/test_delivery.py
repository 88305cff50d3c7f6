"""Delivery to Brevo under pressure: rate limits, batches, partial failures, refused items, several workers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from dataclasses import replace
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from connector.brevo import BrevoClient
from connector.sandbox.brevo import BrevoLimits
from mappings.profile import body_hash
from sync.push import Pusher, PushPolicy
from tests.integration.harness import BREVO_KEY, Connector, iter_connector
from tests.payloads import customer, email_consent, order


def _orders(connector: Connector, n: int, start: int = 1) -> None:
    for i in range(start, start + n):
        assert connector.post("orders/create", order(1000 + i, customer_id=i, email=f"buyer{i}@example.com",
                                                     number=1000 + i)).status_code == 200


def test_a_backlog_goes_out_in_batches_and_imports(engine: sa.Engine) -> None:
    for connector in iter_connector(engine):
        _orders(connector, 60)
        connector.sync()
        calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
        assert len(connector.events("order_completed")) == 60
        assert calls["/v3/events/batch"] == 1 and calls["/v3/events"] == 0
        assert calls["/v3/contacts/import"] == 1 and calls["/v3/contacts"] == 0
        assert connector.contact("buyer60@example.com")["attributes"]["ORDER_COUNT"] == 1


def test_opted_out_buyers_in_a_backlog_go_out_in_their_own_blacklisting_import(connector: Connector) -> None:
    _orders(connector, 60)
    for i in range(1, 11):  # ten of the buyers unsubscribed in Shopify
        connector.post("customers_email_marketing_consent/update",
                       email_consent(i, f"buyer{i}@example.com", "unsubscribed", at=5))
    connector.sync()
    imports = [c for c in connector.brevo.calls if c.path == "/v3/contacts/import" and c.status < 300]
    assert len(imports) == 2 and not [c for c in connector.brevo.calls if c.path == "/v3/contacts"]
    with connector.brevo.lock:
        out = sorted(c["email"] for c in connector.brevo.contacts.values() if c["emailBlacklisted"])
    assert out == sorted(f"buyer{i}@example.com" for i in range(1, 11))


def _stored_json(value: object) -> dict:
    """A JSON column as `Connector.rows` reads it: text on SQLite, decoded on PostgreSQL."""
    return json.loads(value) if isinstance(value, str) else dict(value)  # type: ignore[call-overload]


def test_an_imported_contact_records_the_very_body_it_was_sent_with(connector: Connector) -> None:
    _orders(connector, 60)
    connector.sync()
    rows = connector.rows("SELECT push_state, pending, sent, brevo_email FROM contacts")
    assert len(rows) == 60
    for row in rows:
        sent = _stored_json(row.sent)
        assert row.push_state == "idle" and row.pending in (None, "null") and row.brevo_email == sent["email"]
        held = connector.contact(sent["email"])["attributes"]
        assert {name: held[name] for name in sent["attributes"] if name in held} == \
            {name: value for name, value in sent["attributes"].items() if name in held}
        assert held["ORDER_COUNT"] == 1


def test_a_contact_rebuilt_while_its_import_was_in_flight_stays_pending_and_goes_next(
        connector: Connector, monkeypatch: pytest.MonkeyPatch) -> None:
    _orders(connector, 60)
    forward = BrevoClient.import_contacts

    def rebuilt_meanwhile(client: BrevoClient, rows: Any, list_id: int, **kwargs: Any) -> Any:
        monkeypatch.setattr(BrevoClient, "import_contacts", forward)  # once
        with connector.engine.begin() as conn:  # another body for buyer 7 is pending by the time Brevo answers
            [pending] = conn.execute(sa.text("SELECT pending FROM contacts WHERE contact_key = 'c:7'")).scalars()
            body = _stored_json(pending)
            body["attributes"]["ORDER_COUNT"] = 99
            conn.execute(sa.text("UPDATE contacts SET pending = :body, pending_hash = :hash "
                                 "WHERE contact_key = 'c:7'"),
                         {"body": json.dumps(body), "hash": body_hash(body)})
        return forward(client, rows, list_id, **kwargs)

    monkeypatch.setattr(BrevoClient, "import_contacts", rebuilt_meanwhile)
    connector.sync()
    [row] = connector.rows("SELECT push_state, sent FROM contacts WHERE contact_key = 'c:7'")
    assert row.push_state == "idle" and _stored_json(row.sent)["attributes"]["ORDER_COUNT"] == 99
    assert connector.contact("buyer7@example.com")["attributes"]["ORDER_COUNT"] == 99  # sent on its own after


def test_a_small_backlog_goes_out_as_single_calls(connector: Connector) -> None:
    _orders(connector, 3)  # each order: order_completed and first_order_completed
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/events"] == 6 and calls["/v3/events/batch"] == 0
    assert calls["/v3/contacts"] == 3 and calls["/v3/contacts/import"] == 0


def test_rate_limits_are_respected_from_the_headers_and_nothing_is_lost(engine: sa.Engine) -> None:
    limits = BrevoLimits(contacts=(3, 1.0), events=(2, 1.0))
    policy = PushPolicy(single_max=100, lease_seconds=5)  # force single calls: the tight budgets matter
    for connector in iter_connector(engine, limits=limits, policy=policy):
        _orders(connector, 8)
        connector.sync()
        assert len(connector.events("order_completed")) == 8
        refused = [c for c in connector.brevo.calls if c.status == 429]
        # The pacer waits for the window instead of hammering: at most the first call of a window is refused.
        assert len(refused) <= 2
        assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0


def test_a_spent_batch_budget_falls_back_to_single_events(engine: sa.Engine) -> None:
    limits = BrevoLimits(other=(11, 3600.0))  # one batch leaves 10: the reserve kept for account set-up
    for connector in iter_connector(engine, limits=limits):
        _orders(connector, 30)
        connector.sync()
        _orders(connector, 30, start=31)
        connector.sync()
        assert len(connector.events("order_completed")) == 60
        calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
        assert calls["/v3/events/batch"] == 1 and calls["/v3/events"] == 60  # two events per order


def _sent_in_order(connector: Connector) -> list[tuple[str, Any]]:
    return [(e["event_name"], e["event_properties"].get("order_id")) for e in connector.events()]


def _queued_in_order(connector: Connector) -> list[tuple[str, Any]]:
    bodies = [json.loads(row.body) if isinstance(row.body, str) else row.body for row in connector.rows(
        "SELECT body FROM outbox WHERE target = 'event' ORDER BY id")]
    return [(b["event_name"], b["event_properties"].get("order_id")) for b in bodies]


def test_a_backlog_of_several_batches_goes_out_batch_after_batch_in_order(connector: Connector) -> None:
    connector.policy = replace(connector.policy, batch_max_events=7)
    _orders(connector, 30)
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/events/batch"] == 9 and calls["/v3/events"] == 0  # 60 events, 7 a batch
    assert _sent_in_order(connector) == _queued_in_order(connector)  # each once, in the order queued
    assert connector.rows("SELECT DISTINCT status FROM outbox WHERE target = 'event'") == [("delivered",)]


def test_a_batch_refused_among_several_goes_out_event_by_event_and_the_next_batches_follow(
        connector: Connector) -> None:
    connector.policy = replace(connector.policy, batch_max_events=7)
    _orders(connector, 30)
    connector.brevo.inject_fault(status=400, count=1, path_prefix="/v3/events/batch")  # the first batch
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls if c.status < 300)
    assert calls["/v3/events"] == 7 and calls["/v3/events/batch"] == 8
    assert _sent_in_order(connector) == _queued_in_order(connector)
    assert connector.rows("SELECT DISTINCT status FROM outbox WHERE target = 'event'") == [("delivered",)]
    assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0


def test_a_partial_batch_dead_letters_only_the_refused_events(connector: Connector) -> None:
    _orders(connector, 30)
    connector.brevo.inject_fault(mode="partial", path_prefix="/v3/events/batch", count=1)
    connector.sync()
    delivered = connector.rows("SELECT count(*) AS n FROM outbox WHERE status = 'delivered' AND target = 'event'")[0].n
    dead = connector.rows("SELECT reason FROM dead_letters WHERE source = 'event'")
    assert delivered + len(dead) == 60 and len(dead) == 30  # two events per order, the first half refused
    assert all("refused this event" in d.reason for d in dead)
    assert len(connector.events("order_completed")) == 15


def test_an_event_brevo_refuses_is_dead_lettered_with_its_reason_and_the_rest_go_on(connector: Connector) -> None:
    _orders(connector, 2)
    connector.brevo.inject_fault(status=400, count=1, path_prefix="/v3/events")
    connector.sync()
    [dead] = connector.rows("SELECT source, reference, reason FROM dead_letters")
    assert dead.source == "event" and "400" in dead.reason
    assert len(connector.events("order_completed")) == 1


def test_two_workers_deliver_each_event_exactly_once(engine: sa.Engine) -> None:
    for connector in iter_connector(engine):
        _orders(connector, 40)
        workers = [connector.worker(owner=f"w{i}") for i in range(2)]
        threads = [threading.Thread(target=w.run, kwargs={"until_idle": True, "idle_sleep": 0.05})
                   for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        names = Counter(e["event_properties"]["order_id"] for e in connector.events("order_completed"))
        assert len(names) == 40 and set(names.values()) == {1}
        assert sum(w.stats.applied for w in workers) == 40


def test_one_order_rebuilds_one_contact_and_sends_one_update_and_its_events(connector: Connector) -> None:
    _orders(connector, 25)
    connector.sync()
    before = len(connector.brevo.calls)
    with connector.engine.connect() as conn:
        pushed = dict(conn.execute(sa.text("SELECT contact_key, pushed_at FROM contacts")).all())
    assert connector.post("orders/create", order(2999, customer_id=7, email="buyer7@example.com",
                                                 number=2999)).status_code == 200
    connector.sync()
    calls = Counter(c.path for c in connector.brevo.calls[before:] if c.status < 300)
    buyer = {"email_id": "buyer7@example.com"}
    sent = Counter(e["event_name"] for e in connector.events() if e["identifiers"] == buyer)
    assert calls["/v3/contacts"] == 1 and calls["/v3/orders/status"] == 1
    assert calls["/v3/events"] == sum(sent.values()) - 2  # everything new for buyer 7, one call each
    assert sent["order_completed"] == 2 and sent["repeat_order_completed"] == 1
    assert set(sent) <= {"order_completed", "first_order_completed", "repeat_order_completed", "segment_changed",
                         "vip_entered"}
    assert set(calls) <= {"/v3/contacts", "/v3/events", "/v3/orders/status"}
    with connector.engine.connect() as conn:
        after = dict(conn.execute(sa.text("SELECT contact_key, pushed_at FROM contacts")).all())
    assert [k for k in after if after[k] != pushed.get(k)] == ["c:7"]


def test_a_row_an_import_skipped_is_sent_again_alone_and_dead_lettered_with_brevos_reason(
        connector: Connector) -> None:
    # The merchant's Brevo already holds this email on one contact and this phone number on another.
    for body in ({"email": "second@example.com"}, {"email": "someone@example.com",
                                                   "attributes": {"SMS": "+14155550100"}}):
        assert httpx.post(f"{connector.brevo_server.url}/v3/contacts", json=body,
                          headers={"api-key": BREVO_KEY}).status_code == 201
    # A backlog (one import): 24 new buyers, and one giving that email and that number.
    connector.post("customers/create", customer(901, "second@example.com", phone="+14155550100"))
    for i in range(24):
        connector.post("customers/create", customer(910 + i, f"late{i}@example.com"))
    connector.sync()
    paths = [c.path for c in connector.brevo.calls if c.status < 300]
    assert paths.count("/v3/contacts/import") == 1 and paths.count("/v3/processes/1") == 1
    assert connector.contact("late23@example.com")["attributes"]["SHOPIFY_CUSTOMER_ID"] == "933"
    [dead] = connector.rows("SELECT source, reference, reason FROM dead_letters")
    assert (dead.source, dead.reference) == ("contact", "c:901") and "belong to different contacts" in dead.reason
    assert connector.rows("SELECT count(*) AS n FROM contacts WHERE import_process IS NOT NULL")[0].n == 0


def test_a_phone_number_two_buyers_give_stays_with_one_and_both_reach_brevo(connector: Connector) -> None:
    connector.post("customers/create", customer(950, "owner@example.com", phone="+14155550111"))
    connector.post("customers/create", customer(951, "household@example.com", phone="+14155550111"))
    for i in range(25):  # enough to go through an import
        connector.post("customers/create", customer(960 + i, f"crowd{i}@example.com"))
    connector.sync()
    assert connector.contact("owner@example.com")["sms"] == "+14155550111"
    assert connector.contact("household@example.com")["sms"] is None  # Brevo keeps a number on one contact
    assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0
    paths = [c.path for c in connector.brevo.calls]
    assert paths.count("/v3/contacts/import") == 1 and paths.count("/v3/contacts") == 0  # nothing skipped


def test_guests_known_only_by_their_phone_go_out_in_the_backlogs_import(connector: Connector) -> None:
    _orders(connector, 24)
    for i in range(3):  # guests who gave a phone number and no email
        payload = order(3000 + i, customer_id=None, email=None, number=3000 + i)
        payload["phone"] = f"+1415555013{i}"
        assert connector.post("orders/create", payload).status_code == 200
    connector.sync()
    paths = [c.path for c in connector.brevo.calls if c.status < 300]
    assert paths.count("/v3/contacts/import") == 1 and paths.count("/v3/contacts") == 0
    for i in range(3):
        guest = connector.brevo.find_contact(sms=f"+1415555013{i}")
        assert guest is not None and guest["email"] is None and guest["attributes"]["ORDER_COUNT"] == 1
    assert connector.rows("SELECT count(*) AS n FROM dead_letters")[0].n == 0


def test_a_backlog_read_page_by_page_still_goes_out_in_full_imports(engine: sa.Engine,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sync.push.PLAN_PAGE", 10)  # the backlog is planned ten contacts at a time
    for connector in iter_connector(engine, policy=PushPolicy(import_max_rows=25, lease_seconds=5)):
        _orders(connector, 60)
        for i in range(1, 11):  # ten of the buyers unsubscribed in Shopify: an import of their own
            connector.post("customers_email_marketing_consent/update",
                           email_consent(i, f"buyer{i}@example.com", "unsubscribed", at=5))
        connector.sync()
        with connector.brevo.lock:
            sizes = sorted(p["info"]["import"]["created_contacts"] for p in connector.brevo.processes.values())
            held = len(connector.brevo.contacts)
        assert sizes == [10, 25, 25]  # the 10 who opted out, and the 50 others in two full imports of 25
        assert held == 60 and not [c for c in connector.brevo.calls if c.path == "/v3/contacts"]


def test_the_next_import_is_read_while_brevo_takes_the_one_before(engine: sa.Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[int] = []
    loaded = threading.Condition()
    overlapped: list[bool] = []
    load, post = Pusher._load_contacts, Pusher._post_import

    def loading(self: Pusher, keys: Any, now: Any) -> Any:
        found = load(self, keys, now)
        with loaded:
            loads.append(len(found))
            loaded.notify_all()
        return found

    def posting(self: Pusher, rows: Any, **kwargs: Any) -> Any:
        # Brevo takes this import until the next one's contacts are read (the last: at once). Imports go one at a
        # time, in order: the n-th waits for the (n+1)-th read, which may come before its thread even starts.
        with loaded:
            index = len(overlapped)
            overlapped.append(index < 3 and loaded.wait_for(lambda: len(loads) > index + 1, timeout=10))
        return post(self, rows, **kwargs)

    monkeypatch.setattr(Pusher, "_load_contacts", loading)
    monkeypatch.setattr(Pusher, "_post_import", posting)
    for connector in iter_connector(engine, policy=PushPolicy(import_max_rows=10, single_max=5, lease_seconds=5)):
        loads.clear()
        overlapped.clear()
        _orders(connector, 40)
        connector.sync()
        with connector.brevo.lock:
            sizes = [p["info"]["import"]["created_contacts"] for p in connector.brevo.processes.values()]
            held = len(connector.brevo.contacts)
        assert sizes == [10, 10, 10, 10] and held == 40
        assert loads == [10, 10, 10, 10] and overlapped == [True, True, True, False]
        rows = connector.rows("SELECT push_state, sent_hash, pending_hash, attempts FROM contacts")
        assert {(r.push_state, r.pending_hash, r.attempts) for r in rows} == {("idle", None, 0)}
        assert all(r.sent_hash for r in rows)


def test_on_postgresql_full_imports_go_out_while_the_rest_of_the_buyers_are_still_being_built(
        engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sync.worker.BUILD_BATCH", 5)
    monkeypatch.setattr("sync.worker.IMPORT_EVERY", 20)  # imports that filled up go every 20 buyers built
    monkeypatch.setattr("sync.push.PLAN_PAGE", 10)  # planned 10 contacts at a time: imports of 5 on each page
    dirty: dict[str, list[int]] = {"read": [], "answered": []}
    load, answered = Pusher._load_contacts, Pusher._import_answered

    def count(self: Pusher, moment: str) -> None:
        with self.engine.connect() as conn:  # between two batches of buyers: nothing of theirs is uncommitted
            dirty[moment].append(conn.execute(sa.text("SELECT count(*) FROM contacts WHERE dirty")).scalar_one())

    def loading(self: Pusher, keys: Any, now: Any) -> Any:
        count(self, "read")  # an import's contacts are read just before it is sent
        return load(self, keys, now)

    def answering(self: Pusher, chunk: Any, reply: Any) -> Any:
        count(self, "answered")
        return answered(self, chunk, reply)

    monkeypatch.setattr(Pusher, "_load_contacts", loading)
    monkeypatch.setattr(Pusher, "_import_answered", answering)
    for connector in iter_connector(engine, policy=PushPolicy(import_max_rows=5, single_max=2, lease_seconds=5)):
        connector.post("orders/create", order(999, customer_id=99, email="first@example.com"))
        connector.sync()  # the account is set up, a first buyer sent, and the shop's RFM figures worked out
        dirty["read"].clear()
        dirty["answered"].clear()
        with connector.brevo.lock:
            first_calls = len(connector.brevo.calls)
        _orders(connector, 40)
        connector.sync()
        with connector.brevo.lock:
            sizes = [p["info"]["import"]["created_contacts"] for p in connector.brevo.processes.values()]
            updated = sum(p["info"]["import"]["updated_contacts"] for p in connector.brevo.processes.values())
            held = len(connector.brevo.contacts)
        # Built 20 (of 40): the three imports that filled up on its two pages went, the one that may still fill up
        # waited; built 40: four more; the last went once every buyer was built. Each buyer went once. On SQLite
        # (where the worker is busy building meanwhile: it would only add to the building) all wait for the last.
        assert sizes == [5] * 8 and updated == 0 and held == 41
        postgres = engine.dialect.name == "postgresql"
        assert dirty["read"] == ([20, 20, 20, 0, 0, 0, 0, 0] if postgres else [0] * 8)
        # Each import's answer is written down before the building goes on.
        assert dirty["answered"] == dirty["read"]
        assert not [c for c in connector.brevo.calls[first_calls:] if c.path == "/v3/contacts"]  # none alone
        rows = connector.rows("SELECT push_state, dirty, attempts FROM contacts")
        assert {(r.push_state, bool(r.dirty), r.attempts) for r in rows} == {("idle", False, 0)}
        assert len(connector.events("order_completed")) == 41  # their events followed


def test_an_import_brevo_asks_to_wait_for_holds_back_the_imports_read_after_it(connector: Connector) -> None:
    connector.post("orders/create", order(999, customer_id=99, email="first@example.com"))
    connector.sync()  # the account is set up and a first buyer sent
    connector.brevo.limits = BrevoLimits(contacts=(1, 60.0))  # now one contact call a minute
    connector.policy = PushPolicy(import_max_rows=10, single_max=5, lease_seconds=5)
    _orders(connector, 40)
    connector.worker().run_once()  # one turn: the second import would have to wait a minute
    with connector.brevo.lock:
        sizes = [p["info"]["import"]["created_contacts"] for p in connector.brevo.processes.values()]
    assert sizes == [10]
    rows = connector.rows("SELECT push_state, attempts FROM contacts WHERE contact_key <> 'c:99'")
    assert sorted((r.push_state, r.attempts) for r in rows) == \
        [("idle", 0)] * 10 + [("pending", 0)] * 20 + [("pending", 1)] * 10


def test_when_brevo_says_wait_the_turn_stops_and_only_the_contact_it_refused_counts_an_attempt(
        connector: Connector) -> None:
    connector.post("orders/create", order(999, customer_id=99, email="first@example.com"))
    connector.sync()  # the account is set up and a first buyer sent
    connector.brevo.limits = BrevoLimits(contacts=(3, 60.0))  # now three contact calls a minute
    connector.policy = PushPolicy(single_max=100, lease_seconds=5)  # single calls
    _orders(connector, 8)
    connector.worker().run_once()  # one turn: the fourth call would have to wait a minute
    rows = connector.rows("SELECT push_state, attempts FROM contacts WHERE contact_key <> 'c:99'")
    assert sorted((r.push_state, r.attempts) for r in rows) == \
        [("idle", 0)] * 3 + [("pending", 0)] * 4 + [("pending", 1)]
