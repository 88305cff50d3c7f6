"""the outbox's due indexes hold its pending rows alone

Revision ID: 0021
Revises: 0020
The outbox is read by its due indexes only for rows still to send (`status = 'pending'`), yet each index held
every row, the status among its columns: marking a row delivered moved its entry in both, and the rows already
sent (a backfill's half a million orders) stayed in them for good. The indexes now hold the pending rows alone,
without the status: a delivered row's entries are only removed. A query reaches them by saying
`status = 'pending'` in its text (`connector.models.OUTBOX_PENDING`): PostgreSQL's generic plan of a prepared
statement cannot know that a bound value is 'pending'.
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None

PENDING = sa.text("status = 'pending'")
INDEXES = (("ix_outbox_due", ["shop_id", "next_attempt_at"]), ("ix_outbox_pending", ["shop_id", "target", "id"]))
FULL = (("ix_outbox_due", ["shop_id", "status", "next_attempt_at"]),
        ("ix_outbox_pending", ["shop_id", "status", "target", "id"]))


def upgrade() -> None:
    for name, columns in INDEXES:
        op.drop_index(name, table_name='outbox')
        op.create_index(name, 'outbox', columns, unique=False, sqlite_where=PENDING, postgresql_where=PENDING)


def downgrade() -> None:
    for name, columns in FULL:
        op.drop_index(name, table_name='outbox')
        op.create_index(name, 'outbox', columns, unique=False)
