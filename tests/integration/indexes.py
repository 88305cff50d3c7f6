"""What the database says of one of its indexes: its definition, and how many entries a partial one holds."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import Session


def index_definition(session: Session, index: str) -> str:
    if session.get_bind().dialect.name == "postgresql":
        query = "SELECT indexdef FROM pg_indexes WHERE indexname = :index"
    else:
        query = "SELECT sql FROM sqlite_master WHERE name = :index"
    return str(session.execute(sa.text(query), {"index": index}).scalar_one())


def index_entries(session: Session, table: str, index: str, where: str) -> int:
    """The entries of a partial index: on PostgreSQL as its statistics count them (after ANALYZE); on SQLite, the
    rows read through it (`INDEXED BY`, which fails unless the index can serve `where`)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sa.text(f"ANALYZE {table}"))
        return int(session.execute(sa.text("SELECT reltuples FROM pg_class WHERE relname = :index"),
                                   {"index": index}).scalar_one())
    return int(session.execute(sa.text(f"SELECT count(*) FROM {table} INDEXED BY {index} WHERE {where}")).scalar_one())
