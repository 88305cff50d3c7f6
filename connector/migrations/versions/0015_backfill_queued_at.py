"""when a backfill last queued objects: a worker holds the buyers its history brings until it is done

Revision ID: 0015
Revises: 0014
While a backfill queues a shop's history, a worker that has applied all of it so far would build and send those
buyers (customers without their orders yet) and again once the rest arrives. The backfill now says when it last
queued a chunk (cleared when it stops); a worker leaves the buyers history made dirty alone while that is recent.
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('backfills', sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('backfills', 'queued_at')
