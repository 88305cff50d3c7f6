"""contacts dirtied by history alone

Revision ID: 0007
Revises: 0006
A contact whose pending rebuild was caused only by history (a backfill, a reconciliation poll, a delivery older
than the freshness window): its segment moves and loyalty corrections are then catching up, not news.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('contacts', sa.Column('history', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('contacts', 'history')
