"""Reference webhook intake for bench/intake.py: the least any correct intake must do, as a bare ASGI callable.

Per request: read the body, check the base64 HMAC-SHA256 of the raw body with `hmac.compare_digest`, require the
topic, shop-domain and event-id headers, `json.loads` the body, insert (event id, topic, shop, body) into a SQLite
table in WAL mode (synchronous=NORMAL, as the connector's engine) with the standard library's sqlite3, one commit
per request (autocommit INSERT), and answer 200. A redelivered event id is a no-op (ON CONFLICT DO NOTHING).

No framework (no Starlette, no routing table, no SQLAlchemy): a bare ASGI callable, so that it is the floor the
connector's intake is measured against. Served by uvicorn exactly like the connector (see bench/intake.py):

    uvicorn --factory --app-dir bench reference_intake:create_app   # reads BENCH_REFERENCE_DB, BENCH_SECRET
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sqlite3
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PATH = "/webhooks/shopify"
MAX_BODY_BYTES = 2 * 1024 * 1024
TABLE = "deliveries"

_SCHEMA = f"""
    CREATE TABLE IF NOT EXISTS {TABLE} (
        id INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        topic TEXT NOT NULL,
        shop_domain TEXT NOT NULL,
        body TEXT NOT NULL
    )
"""
_INSERT = f"INSERT INTO {TABLE} (event_id, topic, shop_domain, body) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"


def open_database(path: str) -> sqlite3.Connection:
    """Autocommit connection (isolation_level=None): each INSERT is its own transaction and commit."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("PRAGMA busy_timeout=30000")
    db.execute(_SCHEMA)
    return db


class ReferenceIntake:
    """POST /webhooks/shopify: verify, parse, store once, 200. Anything else: 404."""

    def __init__(self, db: sqlite3.Connection, secret: str) -> None:
        self.db = db
        self.key = secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] != "POST" or scope["path"] != PATH:
            await _answer(send, 404)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _answer(send, 413)
                return
        await _answer(send, self.accept(bytes(body), dict(scope["headers"])))

    def accept(self, body: bytes, headers: dict[bytes, bytes]) -> int:
        signature = headers.get(b"x-shopify-hmac-sha256", b"").strip()
        expected = base64.b64encode(hmac.new(self.key, body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, signature):
            return 401
        topic = headers.get(b"x-shopify-topic")
        shop = headers.get(b"x-shopify-shop-domain")
        event_id = headers.get(b"x-shopify-event-id")
        if not (topic and shop and event_id):
            return 400
        try:
            json.loads(body)
            text = body.decode()
        except ValueError:  # includes UnicodeDecodeError
            return 400
        self.db.execute(_INSERT, (event_id.decode("latin-1"), topic.decode("latin-1"), shop.decode("latin-1"), text))
        return 200


async def _answer(send: Send, status: int) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def create_app() -> ReferenceIntake:
    """uvicorn factory: database path and secret from BENCH_REFERENCE_DB and BENCH_SECRET."""
    return ReferenceIntake(open_database(os.environ["BENCH_REFERENCE_DB"]), os.environ["BENCH_SECRET"])
