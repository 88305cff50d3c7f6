"""reconciliation polls

Revision ID: 0006
Revises: 0005
Per shop and resource: the bookmark a reconciliation poll has read up to, the pass under way (its end and the
cursor of its next page) and when the next poll is due. And a backfill's notice to the merchant (orders read
without `read_all_orders` cover 60 days only).
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'poll_states',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('resource', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('bookmark', sa.DateTime(timezone=True), nullable=False),
        sa.Column('pass_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('cursor', sa.Text(), nullable=True),
        sa.Column('due_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_found', sa.Integer(), nullable=False),
        sa.Column('found', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shop_id', 'resource', name='uq_poll_resource'),
    )
    op.create_index('ix_poll_states_due', 'poll_states', ['due_at'], unique=False)
    op.add_column('backfills', sa.Column('notice', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('backfills', 'notice')
    op.drop_index('ix_poll_states_due', table_name='poll_states')
    op.drop_table('poll_states')
