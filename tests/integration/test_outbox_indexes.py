"""The outbox's rows still to send are read through its indexes, one of which (by target, in id order) holds those
rows alone (a backfill's half a million orders leave it once sent); each query that reads them reaches them: on
PostgreSQL with the generic plan of a prepared statement too, which knows no bound value."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from connector.brevo import BrevoClient
from connector.clock import FixedClock
from connector.database import insert_rows
from connector.models import OutboxEntry, Shop
from mappings.ecommerce import HISTORY_ORDER
from sync.apply import SHOPIFY_CONSENT
from sync.compliance import ERASE
from sync.consent import due_consent_updates
from sync.push import Pusher
from sync.queue import Lease, due_shop_count
from tests.integration.indexes import index_definition, index_entries

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
INDEXES = ("ix_outbox_due", "ix_outbox_pending")
PENDING_ONLY = "ix_outbox_pending"
TARGETS = (HISTORY_ORDER, ERASE, SHOPIFY_CONSENT)


def _outbox(engine: Engine) -> None:
    """A shop with 300 outbox rows, 100 of each target, of which the last one of each is still to send."""
    with Session(engine) as session:
        session.execute(sa.insert(Shop.__table__).values(  # type: ignore[attr-defined]
            id=1, domain="outbox.myshopify.com", status="active", brevo_ready_at=NOW,
            rfm_due_at=NOW.replace(year=2027)))
        rows = [{"shop_id": 1, "idempotency_key": f"{target}:{n}", "event_name": "brevo_order", "target": target,
                 "contact_key": None, "body": {"n": n}, "status": "pending" if n == 100 else "delivered",
                 "attempts": 0, "next_attempt_at": None, "created_at": NOW}
                for target in TARGETS for n in range(1, 101)]
        insert_rows(session, OutboxEntry.__table__, rows)  # type: ignore[attr-defined]
        session.commit()


@contextmanager
def _statements(engine: Engine) -> Iterator[list[tuple[str, Any]]]:
    """The statements run on `engine` meanwhile that read the outbox, with their parameters."""
    seen: list[tuple[str, Any]] = []

    def heard(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "FROM outbox" in statement and statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", heard)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", heard)


def _plan(engine: Engine, statement: str, parameters: Any) -> str:
    """The plan of a statement as the driver ran it; on PostgreSQL, the generic plan of it prepared."""
    with engine.connect() as conn:
        if engine.dialect.name != "postgresql":
            return "\n".join(row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters))
        # psycopg's %(name)s placeholders become $1, $2...; the values are written into EXECUTE's arguments.
        names: list[str] = []

        def numbered(match: re.Match[str]) -> str:
            names.append(match.group(1))
            return f"${len(names)}"

        prepared = re.sub(r"%\((\w+)\)s", numbered, statement).replace("%%", "%")
        conn.exec_driver_sql("SET enable_seqscan = off")  # a table this small is read whole otherwise
        conn.exec_driver_sql("SET plan_cache_mode = force_generic_plan")
        conn.exec_driver_sql(f"PREPARE outbox_query AS {prepared}".replace("%", "%%"))
        arguments = psycopg.sql.SQL(", ").join(psycopg.sql.Literal(parameters[name]) for name in names)
        raw = cast(psycopg.Connection[Any], conn.connection.driver_connection)
        query = psycopg.sql.SQL("EXPLAIN EXECUTE outbox_query ({})").format(arguments) if names else \
            psycopg.sql.SQL("EXPLAIN EXECUTE outbox_query")
        plan = "\n".join(row[0] for row in raw.execute(query))
        conn.exec_driver_sql("DEALLOCATE outbox_query")
        conn.rollback()
        return plan


class _Pusher(Pusher):
    """A pusher whose Brevo has nothing to say: what is read is what matters here."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, BrevoClient("unused-key", base_url="http://127.0.0.1:9/v3"),
                         Lease(shop_id=1, domain="outbox.myshopify.com", token="lease-token", owner="worker"),
                         FixedClock(NOW))

    def _erase(self, body: dict[str, Any]) -> bool:
        return True  # as Brevo answers an erasure of a contact it held


READS: dict[str, Callable[[Engine], object]] = {
    "history orders": lambda engine: _Pusher(engine)._due_events(HISTORY_ORDER, NOW, 0),
    "erasures": lambda engine: _Pusher(engine).push_erasures(),
    "consent updates": lambda engine: due_consent_updates(engine, 1, FixedClock(NOW)),
    "shops with work due": lambda engine: due_shop_count(engine, now=NOW),
}


@pytest.mark.parametrize("read", READS)
def test_each_read_of_the_rows_to_send_goes_through_an_index(engine: Engine, read: str) -> None:
    _outbox(engine)
    with _statements(engine) as seen:
        found = READS[read](engine)
    assert found  # the row to send, or the shop that has it
    assert seen
    for statement, parameters in seen:
        assert "status = 'pending'" in statement  # in the text, not bound: PostgreSQL's generic plan needs it
        plan = _plan(engine, statement, parameters)
        assert any(index in plan for index in INDEXES), plan


def test_the_pushers_reads_by_target_go_through_the_index_of_the_rows_to_send_alone(engine: Engine) -> None:
    _outbox(engine)
    with _statements(engine) as seen:
        assert _Pusher(engine)._due_events(HISTORY_ORDER, NOW, 0)
    [(statement, parameters)] = seen
    assert PENDING_ONLY in _plan(engine, statement, parameters)


def test_a_row_sent_leaves_the_index_of_the_rows_to_send(engine: Engine) -> None:
    _outbox(engine)
    with Session(engine) as session:
        assert index_entries(session, "outbox", PENDING_ONLY, "shop_id = 1 AND status = 'pending'") == len(TARGETS)
        definition = index_definition(session, PENDING_ONLY)
    assert "status" not in definition.split("WHERE")[0]  # of 300 rows, the 3 to send; and not their status
    assert "WHERE" in definition and "'pending'" in definition.split("WHERE")[1]
