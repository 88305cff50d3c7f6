"""expiring offline tokens

Revision ID: 0010
Revises: 0009
An app installed through Shopify's token exchange holds an offline access token that expires (an hour) and a
refresh token that renews it: both are kept encrypted, with their expiry, and the scopes granted.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('shops', sa.Column('access_token_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('shops', sa.Column('refresh_token_enc', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.add_column('shops', sa.Column('refresh_token_expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('shops', sa.Column('installed_scopes', sqlmodel.sql.sqltypes.AutoString(), nullable=True))


def downgrade() -> None:
    for column in ('installed_scopes', 'refresh_token_expires_at', 'refresh_token_enc', 'access_token_expires_at'):
        op.drop_column('shops', column)
