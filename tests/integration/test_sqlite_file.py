"""The SQLite file the connector creates (whichever database the suite runs on: these tests make their own file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col

from connector.database import SQLITE_PAGE_SIZE, WalCheckpointer, make_engine, upgrade
from connector.models import Shop


def _pragma(url: str, name: str) -> object:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
    finally:
        engine.dispose()


def test_a_new_database_is_created_with_large_pages_and_its_write_ahead_log(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'connector.db'}"
    upgrade(url)
    assert SQLITE_PAGE_SIZE == 8192
    assert _pragma(url, "page_size") == SQLITE_PAGE_SIZE
    assert _pragma(url, "journal_mode") == "wal"


def test_a_database_created_with_other_pages_keeps_them_and_works(tmp_path: Path) -> None:
    path = tmp_path / "older.db"
    with sqlite3.connect(path) as db:  # as an older release created it: SQLite's default pages, the log on
        db.execute("PRAGMA page_size=4096")
        db.execute("PRAGMA journal_mode=WAL")
    url = f"sqlite:///{path}"
    upgrade(url)
    assert _pragma(url, "page_size") == 4096
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(Shop.__table__).values(domain="older.myshopify.com"))  # type: ignore[attr-defined]
        with engine.connect() as conn:
            assert conn.execute(sa.select(col(Shop.domain))).scalars().all() == ["older.myshopify.com"]
    finally:
        engine.dispose()


def _rows_in_the_file(path: Path) -> int:
    """The shops in the database file as it is on disk, without what its write-ahead log still holds."""
    db = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return int(db.execute("SELECT count(*) FROM shops").fetchone()[0])
    finally:
        db.close()


def test_a_checkpointer_copies_what_was_written_into_the_file_and_its_thread_ends_when_closed(tmp_path: Path) -> None:
    path = tmp_path / "connector.db"
    upgrade(f"sqlite:///{path}")
    engine = make_engine(f"sqlite:///{path}")
    try:
        checkpointer = WalCheckpointer(engine, interval=0.0)
        with engine.begin() as conn:
            conn.execute(sa.insert(Shop.__table__), [  # type: ignore[attr-defined]
                {"domain": f"shop-{i}.myshopify.com"} for i in range(50)])
        assert _rows_in_the_file(path) == 0  # a few pages: SQLite's own checkpoint waits for 1,000
        checkpointer.written()
        checkpointer.close()
        assert _rows_in_the_file(path) == 50
        assert not checkpointer.thread.is_alive()
    finally:
        engine.dispose()
