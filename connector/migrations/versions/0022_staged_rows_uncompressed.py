"""a backfill's staged rows are stored as they are, not compressed, on PostgreSQL

Revision ID: 0022
Revises: 0021
An order's staged row holds its own line and its line items' (about 2.6 KB at the median), and PostgreSQL
compresses any row over 2 KB before storing it (and decompresses it to read it): work on both sides for rows that
live minutes. With `toast_tuple_target` at its largest, rows up to 8 KB are stored as they are; a larger one (an
order with dozens of line items) is still compressed or moved aside. SQLite has no such setting: nothing changes
there.
"""
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE backfill_rows SET (toast_tuple_target = 8160)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE backfill_rows RESET (toast_tuple_target)")
