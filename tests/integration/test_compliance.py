"""Shopify's lifecycle and privacy topics end to end, over loopback: an uninstall stops a shop, a shop's or a
customer's data is erased when Shopify asks (in the database, in the raw database file, and in Brevo), and a
customer's data is exported on request."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from connector.database import unit_of_work
from connector.models import Backfill, BackfillRow
from connector.shops import add_shop, configure_shop
from tests import payloads as p
from tests.conftest import fixture_payload
from tests.integration.harness import ADMIN_TOKEN, BREVO_KEY, SHOP, Connector, iter_connector
from tests.integration.test_cli import _connector

OTHER = "other-store.myshopify.com"
EMAIL, PHONE = "rosa.redact@example.com", "+14155550137"
KEPT = "kept.buyer@example.com"


@pytest.fixture
def connector(engine: Engine) -> Iterator[Connector]:
    for running in iter_connector(engine):
        # Shops registered like installed apps: tokens encrypted at rest, so an uninstall has one to drop.
        running.settings = running.settings.model_copy(update={"connector_secret_key": "test-secret-key"})
        add_shop(engine, running.settings, domain=SHOP, access_token=ADMIN_TOKEN, brevo_api_key=BREVO_KEY)
        yield running


def _buyers(connector: Connector, *, shop: str = SHOP) -> None:
    """The buyer to erase (a customer with a phone, two orders, a checkout, a consent change) and one to keep."""
    headers = {"X-Shopify-Shop-Domain": shop}
    rosa = p.customer(501, EMAIL, first="Rosa", last="Redact", phone=PHONE)
    for topic, payload in (
            ("customers/create", rosa),
            ("customers/create", p.customer(502, KEPT, first="Kai", last="Kept")),
            ("orders/create", {**p.order(9001, customer_id=501, email=EMAIL, total="80.00", number=1001),
                               "phone": PHONE}),
            ("orders/create", p.order(9002, customer_id=501, email=EMAIL, total="20.00", number=1002)),
            ("orders/create", p.order(9003, customer_id=502, email=KEPT, total="35.00", number=1003)),
            ("checkouts/create", p.checkout(7001, email=EMAIL, customer_id=501, token="chk-rosa",
                                           cart_token="cart-rosa")),
            ("customers_email_marketing_consent/update", p.email_consent(501, EMAIL, "subscribed", at=5))):
        assert connector.post(topic, payload, headers=headers).status_code == 200


def _privacy(topic: str, customer_id: int = 501, **extra: Any) -> dict[str, Any]:
    return {"shop_id": 954889, "shop_domain": SHOP,
            "customer": {"id": customer_id, "email": EMAIL, "phone": PHONE}, **extra}


def _table_text(engine: Engine) -> str:
    """Every row of every table, as text."""
    chunks = []
    with engine.connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            chunks += [repr(tuple(row)) for row in conn.execute(table.select())]
    return "\n".join(chunks).lower()


def _raw_files(engine: Engine) -> bytes:
    database = Path(str(engine.url.database))
    return b"".join(f.read_bytes() for f in (database, Path(f"{database}-wal")) if f.exists())


def test_an_uninstall_stops_the_shop_drops_its_token_and_keeps_its_data(connector: Connector) -> None:
    _buyers(connector)
    connector.sync()
    before = len(connector.events())
    assert connector.post("app/uninstalled", fixture_payload("app_uninstalled__triggerdev.json")).status_code == 200
    connector.sync()
    status, reason, token = connector.rows("SELECT status, paused_reason, access_token_enc FROM shops")[0]
    assert (status, token) == ("uninstalled", None) and "uninstalled" in reason
    assert connector.rows("SELECT count(*) FROM orders")[0][0] == 3  # kept until shop/redact

    # Deliveries that still arrive are answered and change nothing in Brevo.
    assert connector.post("orders/create", p.order(9004, customer_id=502, email=KEPT, number=1004)).status_code == 200
    connector.sync()
    assert len(connector.events()) == before
    assert connector.rows("SELECT count(*) FROM orders")[0][0] == 3


def test_a_shop_redact_erases_every_row_of_that_shop_and_nothing_of_another(connector: Connector) -> None:
    add_shop(connector.engine, connector.settings, domain=OTHER, access_token=ADMIN_TOKEN, brevo_api_key=BREVO_KEY)
    _buyers(connector)
    _buyers(connector, shop=OTHER)
    connector.sync()
    shop_id = connector.rows("SELECT id FROM shops WHERE domain = :d", d=SHOP)[0][0]
    other_id = connector.rows("SELECT id FROM shops WHERE domain = :d", d=OTHER)[0][0]
    other_rows = {t.name: connector.rows(f"SELECT count(*) FROM {t.name} WHERE shop_id = :s", s=other_id)[0][0]
                  for t in SQLModel.metadata.sorted_tables if "shop_id" in t.c}

    connector.post("app/uninstalled", fixture_payload("app_uninstalled__triggerdev.json"))
    connector.post("shop/redact", {"shop_id": 954889, "shop_domain": SHOP})
    connector.sync()

    for table in SQLModel.metadata.sorted_tables:
        if "shop_id" in table.c:
            assert connector.rows(f"SELECT count(*) FROM {table.name} WHERE shop_id = :s", s=shop_id)[0][0] == 0, \
                table.name
            assert connector.rows(f"SELECT count(*) FROM {table.name} WHERE shop_id = :s", s=other_id)[0][0] \
                == other_rows[table.name], table.name
    assert connector.rows("SELECT count(*) FROM inbox WHERE shop_domain = :d", d=SHOP)[0][0] == 0
    assert connector.rows("SELECT domain FROM shops") == [(OTHER,)]
    assert connector.rows("SELECT count(*) FROM inbox WHERE shop_domain = :d", d=OTHER)[0][0] == 7


def test_a_customer_redact_leaves_their_email_and_phone_nowhere_and_deletes_their_brevo_contact(
        connector: Connector) -> None:
    _buyers(connector)
    connector.sync()
    assert connector.brevo.find_contact(email=EMAIL) is not None
    points = connector.rows("SELECT coalesce(sum(points), 0) FROM loyalty_entries")[0][0]
    connector.post("customers/data_request", _privacy("customers/data_request", data_request={"id": 77},
                                                       orders_requested=[9001]))
    connector.sync()
    assert EMAIL in _table_text(connector.engine)  # the export holds it, for the merchant

    response = connector.post("customers/redact", _privacy("customers/redact", orders_to_redact=[9001, 9002]))
    assert response.status_code == 200
    connector.sync()

    assert connector.brevo.find_contact(email=EMAIL) is None
    assert connector.brevo.find_contact(email=KEPT) is not None
    text = _table_text(connector.engine)
    for secret in (EMAIL, PHONE, PHONE.removeprefix("+"), "rosa"):
        assert secret not in text, secret
    if connector.engine.dialect.name == "sqlite":  # nothing left in the file's free pages or the log either
        raw = _raw_files(connector.engine).lower()
        for secret in (EMAIL, PHONE.removeprefix("+"), "rosa"):
            assert secret.encode() not in raw, secret
    assert connector.rows("SELECT count(*) FROM orders")[0][0] == 1
    assert connector.rows("SELECT count(*) FROM data_exports")[0][0] == 0
    # The ledger still adds up: the erased buyer's entries stay under an anonymous holder.
    assert connector.rows("SELECT coalesce(sum(points), 0) FROM loyalty_entries")[0][0] == points
    assert connector.rows("SELECT count(*) FROM loyalty_entries WHERE contact_key LIKE 'redacted:%'")[0][0] > 0
    erasure = connector.rows("SELECT status, body FROM outbox WHERE target = 'erase'")
    assert [(s, json.loads(b) if isinstance(b, str) else b) for s, b in erasure] == [
        ("delivered", {"ext_id": "gid://shopify/Customer/501", "mode": "delete", "found": True})]


def test_a_shop_can_have_erased_buyers_anonymised_in_brevo_instead(connector: Connector) -> None:
    configure_shop(connector.engine, SHOP, '[privacy]\nredact_in_brevo = "anonymise"\n')
    _buyers(connector)
    connector.sync()
    connector.post("customers/redact", _privacy("customers/redact", orders_to_redact=[9001, 9002]))
    connector.sync()
    assert connector.brevo.find_contact(email=EMAIL) is None
    with connector.brevo.lock:
        anonymous = [c for c in connector.brevo.contacts.values() if (c["email"] or "").endswith(".invalid")]
    assert len(anonymous) == 1
    attributes = anonymous[0]["attributes"]
    assert "FIRSTNAME" not in attributes and "SMS" not in attributes
    assert attributes["ORDER_COUNT"] == 2  # the figures stay for the merchant's reports
    assert anonymous[0]["emailBlacklisted"] and anonymous[0]["smsBlacklisted"]


def test_a_data_request_exports_what_is_held_and_keeps_no_copy_in_the_inbox(connector: Connector) -> None:
    _buyers(connector)
    connector.sync()
    connector.post("customers/data_request", _privacy("customers/data_request", data_request={"id": 77},
                                                       orders_requested=[9001]))
    connector.sync()
    [(key, body)] = connector.rows("SELECT request_key, body FROM data_exports")
    export = json.loads(body)
    assert key == "77"
    assert export["customer"][0]["email"] == EMAIL and export["customer"][0]["phone"] == PHONE
    assert sorted(o["order_id"] for o in export["orders"]) == [9001, 9002]
    assert {e["event_name"] for e in export["brevo_events"]} >= {"order_completed", "customer_created"}
    assert [c["state"] for c in export["consent_history"]] == ["subscribed"]
    assert export["loyalty_entries"]
    [(stored,)] = connector.rows("SELECT body FROM inbox WHERE topic = 'customers/data_request'")
    assert EMAIL not in stored and PHONE not in stored

    # The same request delivered again exports nothing twice.
    connector.post("customers/data_request", _privacy("customers/data_request", data_request={"id": 77}))
    connector.sync()
    assert connector.rows("SELECT count(*) FROM data_exports")[0][0] == 1


def test_an_unreadable_privacy_request_is_kept_with_its_reason_and_a_forged_one_refused(
        connector: Connector) -> None:
    _buyers(connector)
    connector.sync()
    assert connector.post("customers/redact", _privacy("customers/redact"), secret="forged").status_code == 401
    assert connector.post("customers/redact", {"shop_domain": SHOP, "customer": "501"}).status_code == 200
    connector.sync()
    [(status, error)] = connector.rows("SELECT status, error FROM inbox WHERE topic = 'customers/redact'")
    assert status == "failed" and "no customer" in error
    assert connector.rows("SELECT count(*) FROM dead_letters WHERE topic = 'customers/redact'")[0][0] == 1
    assert connector.brevo.find_contact(email=EMAIL) is not None  # nothing erased on a request not understood


def test_the_merchant_lists_and_saves_data_exports_from_the_command_line(connector: Connector, tmp_path: Path) -> None:
    _buyers(connector)
    connector.post("customers/data_request", _privacy("customers/data_request", data_request={"id": 78}))
    connector.sync()
    env = {"DATABASE_URL": connector.engine.url.render_as_string(hide_password=False), "COLUMNS": "160"}
    listed = _connector("shops", "exports", "--shop", SHOP, env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "78" in listed.stdout and "501" in listed.stdout
    export_id = connector.rows("SELECT id FROM data_exports")[0][0]
    saved = _connector("shops", "exports", "--shop", SHOP, "--id", str(export_id), "--out", "rosa.json", env=env,
                       cwd=tmp_path)
    assert saved.returncode == 0, saved.stderr
    assert json.loads((tmp_path / "rosa.json").read_text())["customer"][0]["customer_id"] == 501
    missing = _connector("shops", "exports", "--shop", SHOP, "--id", "999", env=env, cwd=tmp_path)
    assert missing.returncode == 2 and "no export 999" in missing.stderr


def test_a_customer_who_was_a_guest_first_is_erased_with_their_guest_self(connector: Connector) -> None:
    guest = p.order(9101, customer_id=None, email=EMAIL, total="40.00", number=1101)
    assert connector.post("orders/create", guest).status_code == 200
    connector.sync()  # a guest contact in Brevo, points on the guest's ledger
    _buyers(connector)  # then they register: the guest merges into the customer
    connector.sync()
    connector.post("customers/redact", _privacy("customers/redact", orders_to_redact=[9001, 9002, 9101]))
    connector.sync()
    text = _table_text(connector.engine)
    assert EMAIL not in text and PHONE not in text
    assert connector.brevo.find_contact(email=EMAIL) is None
    assert connector.rows("SELECT count(*) FROM dead_letters")[0][0] == 0


def test_staged_backfill_lines_go_with_the_shop(connector: Connector) -> None:
    _buyers(connector)
    connector.sync()
    shop_id = connector.rows("SELECT id FROM shops WHERE domain = :d", d=SHOP)[0][0]
    with unit_of_work(connector.engine) as session:
        run = Backfill(shop_id=shop_id, resource="customers", status="staging")
        session.add(run)
        session.flush()
        session.add(BackfillRow(backfill_id=run.id or 0, line=1, body=json.dumps({"email": EMAIL})))
    connector.post("shop/redact", {"shop_id": 954889, "shop_domain": SHOP})
    connector.sync()
    assert connector.rows("SELECT count(*) FROM backfill_rows")[0][0] == 0
    assert EMAIL not in _table_text(connector.engine)


def test_a_privacy_request_for_a_shop_not_held_here_leaves_nothing_of_the_customer(connector: Connector) -> None:
    unknown = {"X-Shopify-Shop-Domain": "never-installed.myshopify.com"}
    connector.post("orders/create", {**p.order(9201, customer_id=501, email=EMAIL), "phone": PHONE}, headers=unknown)
    connector.post("customers/redact", _privacy("customers/redact"), headers=unknown)
    connector.sync()
    text = _table_text(connector.engine)
    assert EMAIL not in text and PHONE not in text
    [(status, body)] = connector.rows("SELECT status, body FROM inbox WHERE topic = 'customers/redact'")
    assert status == "applied" and json.loads(body)["customer"] == {"id": 501}
