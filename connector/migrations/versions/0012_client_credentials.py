"""shops registered by their app's client credentials; privacy requests of unknown shops found by index

Revision ID: 0012
Revises: 0011
A merchant's own app can be registered by its client id and secret (kept encrypted): each access token is
exchanged through the client-credentials grant and exchanged again before it expires.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('shops', sa.Column('client_id', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=True))
    op.add_column('shops', sa.Column('client_secret_enc', sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.create_index('ix_inbox_lifecycle', 'inbox', ['status'], unique=False,
                    sqlite_where=sa.text("status = 'lifecycle'"), postgresql_where=sa.text("status = 'lifecycle'"))


def downgrade() -> None:
    op.drop_index('ix_inbox_lifecycle', table_name='inbox')
    op.drop_column('shops', 'client_secret_enc')
    op.drop_column('shops', 'client_id')
