"""loyalty ledger

Revision ID: 0003
Revises: 0002
The points ledger: append-only, unique per shop, contact and source key.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'loyalty_entries',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('contact_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('entry_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('points', sa.Integer(), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('recorded_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shop_id', 'contact_key', 'entry_key', name='uq_loyalty_entry'),
    )


def downgrade() -> None:
    op.drop_table('loyalty_entries')
