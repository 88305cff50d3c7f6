"""Shopify webhook intake: verify the HMAC over the raw body, store the delivery once, answer. Nothing else."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from connector.database import WalCheckpointer, is_sqlite
from connector.models import LIFECYCLE_TOPICS, InboxEntry

log = logging.getLogger("connector.intake")


def sign(body: bytes, secret: str) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def verify_hmac(body: bytes, header: str | None, secrets: Sequence[str]) -> bool:
    """Constant-time check against the current secret and, during a rotation, the previous one."""
    if not header or not secrets:
        return False
    try:
        given = base64.b64decode(header.strip(), validate=True)
    except ValueError:
        return False
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode(), body, hashlib.sha256).digest()
        ok |= hmac.compare_digest(expected, given)
    return ok


def parse_triggered_at(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC)


@dataclass(frozen=True)
class IntakeResult:
    status: int
    message: str
    stored: bool = False


class InboxWriter:
    """Group commit: deliveries that arrive together are inserted together, by one thread, in one transaction.

    Each caller still gets its answer only after its own row is committed (nothing is acknowledged before
    it is stored). On SQLite, whose single write lock the worker holds for a moment at a time, this turns
    "one lock wait per webhook" into "one lock wait per batch", and keeps the event loop free meanwhile.
    The answers of one batch reach the event loop in one wake-up, not one per delivery.

    On SQLite a commit that finds the write-ahead log over 1,000 pages copies it into the database file first,
    taking about ten times as long, and every webhook waiting behind it with it; a `WalCheckpointer` copies the
    log from its own thread alongside the commits, so that such a commit finds little left to copy.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 500) -> None:
        self.engine, self.max_batch = engine, max_batch
        self.queue: queue.Queue[_Pending] = queue.Queue()
        self.checkpointer = WalCheckpointer(engine) if is_sqlite(engine) else None
        self.thread = threading.Thread(target=self._run, name="inbox-writer", daemon=True)
        self.thread.start()

    def submit(self, params: dict[str, Any]) -> asyncio.Future[bool]:
        """Queue a row; the future (of the running loop) says whether it was new once it is committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self.queue.put(_Pending(params, future, loop))
        return future

    def _run(self) -> None:
        while True:  # this thread must outlive any one batch: every later webhook depends on it
            batch = [self.queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            answers: list[tuple[_Pending, bool | BaseException]] = []
            try:
                self._store(batch, answers)
            except BaseException as exc:  # pragma: no cover - a bug here must not leave callers waiting
                answers = [(item, exc) for item in batch]
            _answer(answers)

    def _store(self, batch: list[_Pending], answers: list[tuple[_Pending, bool | BaseException]]) -> None:
        try:
            stored = self._insert([item.params for item in batch])
        except Exception as exc:
            if len(batch) == 1:  # the database is down or refused this row: its caller hears it (503)
                answers.append((batch[0], exc))
                return
            for item in batch:  # one bad row must not fail its neighbours: store them one by one
                self._store([item], answers)
            return
        for item in batch:
            key = (item.params["shop_domain"], item.params["event_id"])
            answers.append((item, key in stored))
            stored.discard(key)  # the same event twice in one batch: the second is the duplicate

    def _insert(self, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
        table = InboxEntry.__table__  # type: ignore[attr-defined]
        insert = postgresql.insert if self.engine.dialect.name == "postgresql" else sqlite.insert
        values = [{**row, "source": "webhook", "status": "lifecycle" if row["topic"] in LIFECYCLE_TOPICS else "pending"}
                  for row in rows]
        # One statement whatever the batch size (compiled once); the rows that were new come back.
        statement = (insert(table).on_conflict_do_nothing(index_elements=["shop_domain", "event_id"])
                     .returning(table.c.shop_domain, table.c.event_id))
        with self.engine.begin() as conn:
            stored = {(r.shop_domain, r.event_id) for r in conn.execute(statement, values)}
        if self.checkpointer is not None:
            self.checkpointer.written()
        return stored


@dataclass(frozen=True)
class _Pending:
    params: dict[str, Any]
    future: asyncio.Future[bool]
    loop: asyncio.AbstractEventLoop


def _answer(answers: list[tuple[_Pending, bool | BaseException]]) -> None:
    """Hand each loop its batch of answers in one call (a loop that has closed has no one left to answer)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[bool], bool | BaseException]]] = {}
    for item, outcome in answers:
        by_loop.setdefault(item.loop, []).append((item.future, outcome))
    for loop, outcomes in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: its callers are gone; the rows are stored
            loop.call_soon_threadsafe(_settle, outcomes)


def _settle(outcomes: list[tuple[asyncio.Future[bool], bool | BaseException]]) -> None:
    """In the loop: answer the callers that are still waiting (a cancelled request's row is stored anyway)."""
    for future, outcome in outcomes:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class Intake:
    """Stores verified deliveries in the inbox. Used by the HTTP route; holds no Shopify or Brevo client."""

    def __init__(self, engine: Engine, secrets: Sequence[str], *, max_body_bytes: int,
                 on_stored: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.secrets = tuple(secrets)
        self.max_body_bytes = max_body_bytes
        self.on_stored = on_stored
        self._writer: InboxWriter | None = None

    @property
    def writer(self) -> InboxWriter:
        if self._writer is None:
            self._writer = InboxWriter(self.engine)
        return self._writer

    def check(self, body: bytes, header: Callable[[str], str | None]) -> IntakeResult | dict[str, Any]:
        """The row to store, or the refusal (413, 401, 400) with its reason."""
        if len(body) > self.max_body_bytes:
            return IntakeResult(413, f"body larger than {self.max_body_bytes} bytes")
        hmac_header = header("x-shopify-hmac-sha256") or header("shopify-hmac-sha256")
        if not verify_hmac(body, hmac_header, self.secrets):
            return IntakeResult(401, "missing or invalid HMAC signature")
        topic = header("x-shopify-topic") or header("shopify-topic")
        shop = header("x-shopify-shop-domain") or header("shopify-shop-domain")
        if not topic:
            return IntakeResult(400, "missing X-Shopify-Topic header")
        if not shop:
            return IntakeResult(400, "missing X-Shopify-Shop-Domain header")
        webhook_id = header("x-shopify-webhook-id") or header("shopify-webhook-id")
        event_id = header("x-shopify-event-id") or header("shopify-event-id") or webhook_id
        if not event_id:
            return IntakeResult(400, "missing X-Shopify-Event-Id and X-Shopify-Webhook-Id headers")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = body.decode("utf-8", errors="replace")  # kept; the applier will quarantine it with the reason
        return {
            "shop_domain": shop.strip().lower()[:255], "event_id": event_id.strip()[:100],
            "topic": topic.strip().lower()[:100], "webhook_id": (webhook_id or "")[:100] or None,
            "triggered_at": parse_triggered_at(header("x-shopify-triggered-at") or header("shopify-triggered-at")),
            "api_version": (header("x-shopify-api-version") or header("shopify-api-version") or "")[:20] or None,
            "body": text, "received_at": datetime.now(UTC),
        }

    def stored(self, was_new: bool) -> IntakeResult:
        if was_new and self.on_stored is not None:
            self.on_stored()
        return IntakeResult(200, "stored" if was_new else "duplicate", stored=was_new)

    async def accept_async(self, body: bytes, header: Callable[[str], str | None]) -> IntakeResult:
        """The HTTP route's intake: stored through the group-commit writer, answered once committed."""
        checked = self.check(body, header)
        if isinstance(checked, IntakeResult):
            return checked
        try:
            was_new = await self.writer.submit(checked)
        except Exception as exc:
            return IntakeResult(503, f"the delivery could not be stored ({type(exc).__name__}); Shopify will retry")
        return self.stored(was_new)
