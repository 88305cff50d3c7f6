"""Group commit at intake: deliveries stored together, each acknowledged only once committed, none lost."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

import sqlalchemy as sa

from connector.database import make_engine, upgrade
from webhooks.intake import Intake, sign

SECRET = "s3cret"


def _headers(event_id: str, body: bytes) -> dict[str, str]:
    return {"x-shopify-hmac-sha256": sign(body, SECRET), "x-shopify-topic": "orders/create",
            "x-shopify-shop-domain": "shop.myshopify.com", "x-shopify-event-id": event_id}


def test_concurrent_deliveries_are_all_stored_once_and_duplicates_are_told_apart(engine: sa.Engine) -> None:
    intake = Intake(engine, [SECRET], max_body_bytes=100_000)
    bodies = [json.dumps({"id": i}).encode() for i in range(60)]
    event_ids = [f"ev-{i % 50}" for i in range(60)]  # ten redeliveries among sixty requests

    async def deliver_all() -> list[str]:
        results = await asyncio.gather(*(intake.accept_async(b, _headers(e, b).get)
                                         for b, e in zip(bodies, event_ids, strict=True)))
        return [r.message for r in results]

    messages = asyncio.run(deliver_all())
    assert messages.count("stored") == 50 and messages.count("duplicate") == 10
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM inbox")).scalar_one() == 50


def test_a_delivery_the_database_cannot_store_is_answered_503_so_shopify_retries(tmp_path: Path) -> None:
    broken = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")  # cannot be opened
    intake = Intake(broken, [SECRET], max_body_bytes=100_000)
    body = b'{"id": 1}'
    result = asyncio.run(intake.accept_async(body, _headers("ev-1", body).get))
    assert result.status == 503 and "Shopify will retry" in result.message


def test_a_bad_signature_never_reaches_the_writer(engine: sa.Engine) -> None:
    intake = Intake(engine, [SECRET], max_body_bytes=100_000)
    body = b'{"id": 1}'
    headers = {**_headers("ev-1", body), "x-shopify-hmac-sha256": sign(body, "wrong")}
    assert asyncio.run(intake.accept_async(body, headers.get)).status == 401
    assert intake._writer is None


def test_on_sqlite_stored_deliveries_are_copied_out_of_the_write_ahead_log_in_the_background(tmp_path: Path) -> None:
    # SQLite's own automatic checkpoint waits for 1,000 pages of log and then makes one commit (and every
    # delivery behind it) wait while it copies them; the intake's checkpointer copies them as they come instead.
    path = tmp_path / "intake.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    intake = Intake(engine, [SECRET], max_body_bytes=100_000)
    bodies = [json.dumps({"id": i, "note": "x" * 500}).encode() for i in range(40)]

    async def deliver_all() -> None:
        await asyncio.gather(*(intake.accept_async(b, _headers(f"ev-{i}", b).get) for i, b in enumerate(bodies)))

    asyncio.run(deliver_all())

    def rows_in_database_file() -> int:  # the file as it is on disk, without what the log still holds
        db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            return int(db.execute("SELECT count(*) FROM inbox").fetchone()[0])
        finally:
            db.close()

    deadline = time.monotonic() + 5
    while rows_in_database_file() < 40 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert rows_in_database_file() == 40
    engine.dispose()
