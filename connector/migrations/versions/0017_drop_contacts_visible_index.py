"""drop the index of contacts by the time Brevo shows them

Revision ID: 0017
Revises: 0016
Migration 0014 added it for the pusher's look at the buyers Brevo may not show yet, asked then as a union of
three lookups. The pusher now asks, for each row it sends, its own buyer by primary key, and the other readers of
`visible_at` (the import checks, the due shops) go by the import index. Nothing reads this index any more, while
every contact sent rewrites it.
"""
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_contacts_visible', table_name='contacts')


def downgrade() -> None:
    op.create_index('ix_contacts_visible', 'contacts', ['shop_id', 'visible_at'], unique=False)

