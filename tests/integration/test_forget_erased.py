"""After an erasure the SQLite write-ahead log is emptied into the database file, even when another connection
keeps it busy for a moment (`forget_erased`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from connector.database import forget_erased, make_engine

SECRET = "erased.buyer@example.com"


def _engine(tmp_path: Path) -> sa.Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'erase.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE buyers (id INTEGER PRIMARY KEY, email TEXT)"))
        conn.execute(sa.text("INSERT INTO buyers (email) VALUES (:e)"), {"e": SECRET})
    return engine


def _on_disk(tmp_path: Path) -> bytes:
    return b"".join(f.read_bytes() for f in tmp_path.glob("erase.db*"))


def _reader(tmp_path: Path) -> Any:
    """Another connection, inside a transaction that holds a snapshot of the database."""
    reader = make_engine(f"sqlite:///{tmp_path / 'erase.db'}").raw_connection()
    reader.cursor().execute("BEGIN")
    reader.cursor().execute("SELECT count(*) FROM buyers").fetchone()
    return reader


def test_the_log_is_emptied_once_a_reader_holding_an_old_snapshot_lets_go(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    reader = _reader(tmp_path)
    with engine.begin() as conn:  # the erasure, written past the reader's snapshot
        conn.execute(sa.text("DELETE FROM buyers WHERE email = :e"), {"e": SECRET})
    letting_go = threading.Timer(0.3, lambda: reader.cursor().execute("COMMIT"))
    letting_go.start()  # a moment later
    assert forget_erased(engine, attempts=50, pause=0.05)
    letting_go.join()
    reader.close()
    assert SECRET.encode() not in _on_disk(tmp_path)
    assert (tmp_path / "erase.db-wal").stat().st_size == 0
    engine.dispose()


def test_a_log_kept_busy_is_reported_not_taken_for_emptied(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM buyers WHERE email = :e"), {"e": SECRET})
    reader = _reader(tmp_path)
    with engine.begin() as conn:  # a later write: the log cannot be emptied past the reader's snapshot
        conn.execute(sa.text("INSERT INTO buyers (email) VALUES ('kept@example.com')"))
    assert not forget_erased(engine, attempts=3, pause=0.01)
    reader.cursor().execute("COMMIT")
    assert forget_erased(engine)
    reader.close()
    engine.dispose()
