"""The SQLite file the connector creates (whichever database the suite runs on: these tests make their own file)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa
from sqlmodel import col

from connector.database import SQLITE_PAGE_SIZE, make_engine, upgrade
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
