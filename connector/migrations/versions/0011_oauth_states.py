"""one-time states of the authorization-code install

Revision ID: 0011
Revises: 0010
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'oauth_states',
        sa.Column('state', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column('shop_domain', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('state'),
    )


def downgrade() -> None:
    op.drop_table('oauth_states')
