"""the outbox's index of rows to send by target holds those rows alone

Revision ID: 0021
Revises: 0020
The pusher reads each target's rows still to send (`status = 'pending'`) in id order, through an index of the
shop, status, target and id, which held every row: marking a row delivered moved its entry, and the rows already
sent (a backfill's half a million orders) stayed in it for good, to be walked past. The index now holds the
pending rows alone, without the status: a delivered row's entry is only removed. A query reaches it by saying
`status = 'pending'` in its text (`connector.models.OUTBOX_PENDING`): PostgreSQL's generic plan of a prepared
statement cannot know that a bound value is 'pending'. The index of due rows keeps every row: the counts by
status (`/metrics`) and the delivered orders the count report reads go through it.
"""
import sqlalchemy as sa
from alembic import op

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_outbox_pending', table_name='outbox')
    pending = sa.text("status = 'pending'")
    op.create_index('ix_outbox_pending', 'outbox', ['shop_id', 'target', 'id'], unique=False, sqlite_where=pending,
                    postgresql_where=pending)


def downgrade() -> None:
    op.drop_index('ix_outbox_pending', table_name='outbox')
    op.create_index('ix_outbox_pending', 'outbox', ['shop_id', 'status', 'target', 'id'], unique=False)
