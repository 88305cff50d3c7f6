"""a staged backfill is applied by the workers from its staged lines

Revision ID: 0018
Revises: 0017
A backfill used to queue its staged objects into the inbox itself (status `queuing`); the workers now apply them
from the staged lines, from the line after `last_queued_line`, which is where a backfill left queuing: the same
rows, renamed `staged`, carry on.
"""
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE backfills SET status = 'staged' WHERE status = 'queuing'")


def downgrade() -> None:
    op.execute("UPDATE backfills SET status = 'queuing' WHERE status = 'staged'")
