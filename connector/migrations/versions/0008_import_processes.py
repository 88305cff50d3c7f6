"""imports checked

Revision ID: 0008
Revises: 0007
The Brevo import process that carried a contact's last body, until the process is checked; and whether the
contact must go out one by one because an import skipped some of its rows.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('contacts', sa.Column('import_process', sa.Integer(), nullable=True))
    op.add_column('contacts', sa.Column('one_by_one', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_contacts_import', 'contacts', ['shop_id', 'import_process'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_contacts_import', table_name='contacts')
    op.drop_column('contacts', 'one_by_one')
    op.drop_column('contacts', 'import_process')
