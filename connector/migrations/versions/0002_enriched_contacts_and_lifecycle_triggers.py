"""enriched contacts and lifecycle triggers

Revision ID: 0002
Revises: 0001
Existing rows get defaults: no counted orders yet (the next profile build fills the figures).
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

import connector.models

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('order_count', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('total_spent', connector.models.Money(length=40), nullable=False,
                                      server_default='0'))
        batch_op.add_column(sa.Column('last_order_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('days_between_orders', connector.models.Money(length=40), nullable=True))
        batch_op.add_column(sa.Column('rfm_score', sqlmodel.sql.sqltypes.AutoString(length=3), nullable=True))
        batch_op.add_column(sa.Column('rfm_segment', sqlmodel.sql.sqltypes.AutoString(length=30), nullable=True))
        batch_op.add_column(sa.Column('lifecycle_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lifecycle_scanned_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('created_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_contacts_lifecycle', ['shop_id', 'lifecycle_due_at'], unique=False)

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('note', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('birthday', sqlmodel.sql.sqltypes.AutoString(length=10), nullable=True))

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('source_name', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
        batch_op.add_column(sa.Column('tags', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('subscription', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('rebill', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column('fulfilled_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('country_code', sqlmodel.sql.sqltypes.AutoString(length=2), nullable=True))
        batch_op.add_column(sa.Column('city', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
        batch_op.add_column(sa.Column('locale', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('target', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False,
                                      server_default='event'))

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.add_column(sa.Column('collections', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('brevo_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))

    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.add_column(sa.Column('config', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('rfm_thresholds', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('rfm_due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('median_days_between', connector.models.Money(length=40), nullable=True))
        batch_op.add_column(sa.Column('brevo_options', sa.JSON(), nullable=True))



    # The Brevo set-up is idempotent: running it again creates the attributes this release adds.
    op.execute("UPDATE shops SET brevo_ready_at = NULL")
    # Every existing contact is rebuilt once: the new figures and RFM need their orders read again.
    op.execute("UPDATE contacts SET dirty = true WHERE merged_into IS NULL")


def downgrade() -> None:
    with op.batch_alter_table('shops', schema=None) as batch_op:
        batch_op.drop_column('brevo_options')
        batch_op.drop_column('median_days_between')
        batch_op.drop_column('rfm_due_at')
        batch_op.drop_column('rfm_thresholds')
        batch_op.drop_column('config')

    with op.batch_alter_table('products', schema=None) as batch_op:
        batch_op.drop_column('brevo_hash')
        batch_op.drop_column('collections')

    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('target')

    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_column('locale')
        batch_op.drop_column('city')
        batch_op.drop_column('country_code')
        batch_op.drop_column('fulfilled_at')
        batch_op.drop_column('rebill')
        batch_op.drop_column('subscription')
        batch_op.drop_column('tags')
        batch_op.drop_column('source_name')

    with op.batch_alter_table('customers', schema=None) as batch_op:
        batch_op.drop_column('birthday')
        batch_op.drop_column('note')

    with op.batch_alter_table('contacts', schema=None) as batch_op:
        batch_op.drop_index('ix_contacts_lifecycle')
        batch_op.drop_column('created_at')
        batch_op.drop_column('lifecycle_scanned_at')
        batch_op.drop_column('lifecycle_due_at')
        batch_op.drop_column('rfm_segment')
        batch_op.drop_column('rfm_score')
        batch_op.drop_column('days_between_orders')
        batch_op.drop_column('last_order_at')
        batch_op.drop_column('total_spent')
        batch_op.drop_column('order_count')

