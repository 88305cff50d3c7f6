"""loyalty program wired to shops and contacts

Revision ID: 0004
Revises: 0003
Per-shop rules and the moments the program started and its rules last changed; each contact's last announced
tier and the rules it was computed with; an order's points basis; reward codes. Existing shops start their
program now, retroactively: every contact is rebuilt (points from the full history, no live events for the
past) and the Brevo set-up runs again so that the loyalty attributes exist in the account.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

import connector.models

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('loyalty_rules', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('loyalty_started_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('loyalty_rules_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('loyalty_tier', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=True))
        batch_op.add_column(sa.Column('loyalty_rules_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('points_basis', connector.models.Money(length=40), nullable=True))
    op.create_table(
        'loyalty_rewards',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('contact_key', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
        sa.Column('request_key', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('points', sa.Integer(), nullable=False),
        sa.Column('value', connector.models.Money(length=40), nullable=False),
        sa.Column('code', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('discount_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('attempts', sa.Integer(), nullable=False, server_default='0'),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('issued_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shop_id', 'request_key', name='uq_loyalty_reward_request'),
        sa.UniqueConstraint('shop_id', 'code', name='uq_loyalty_reward_code'),
    )
    op.create_index('ix_loyalty_rewards_due', 'loyalty_rewards', ['shop_id', 'status'], unique=False)
    now = sa.func.current_timestamp()
    shops = sa.table('shops', sa.column('loyalty_started_at'), sa.column('loyalty_rules_at'),
                     sa.column('brevo_ready_at'))
    op.execute(sa.update(shops).values(loyalty_started_at=now, loyalty_rules_at=now, brevo_ready_at=None))
    op.execute(sa.update(sa.table('contacts', sa.column('dirty'))).values(dirty=True))


def downgrade() -> None:
    op.drop_index('ix_loyalty_rewards_due', table_name='loyalty_rewards')
    op.drop_table('loyalty_rewards')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('points_basis')
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_column('loyalty_rules_at')
        batch_op.drop_column('loyalty_tier')
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.drop_column('loyalty_rules_at')
        batch_op.drop_column('loyalty_started_at')
        batch_op.drop_column('loyalty_rules')
