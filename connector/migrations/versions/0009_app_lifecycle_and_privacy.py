"""app lifecycle and privacy requests

Revision ID: 0009
Revises: 0008
When a shop uninstalled the app, and the exports of customers' data Shopify asked for. (Lifecycle and privacy
deliveries wait in the inbox with status 'lifecycle': the inbox's index finds them.)
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('shops', sa.Column('uninstalled_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'data_exports',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('request_key', sa.String(length=100), nullable=False),
        sa.Column('customer_id', sa.BigInteger(), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shop_id', 'request_key', name='uq_data_export_request'),
    )
    op.create_index('ix_data_exports_shop_id', 'data_exports', ['shop_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_data_exports_shop_id', table_name='data_exports')
    op.drop_table('data_exports')
    op.drop_column('shops', 'uninstalled_at')
