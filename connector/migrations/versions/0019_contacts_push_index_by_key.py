"""the index of contacts by push state carries their key

Revision ID: 0019
Revises: 0018
The pusher reads the contacts due to Brevo a page at a time, in key order from the last key read. With the index
on (shop, push state) alone, SQLite walked the shop's contacts by primary key from that key and checked each row's
state: every turn with nothing or little to send read every contact of the shop (at 20,000 customers about 8 ms a
turn, 30 turns of a backfill). With the key in the index, a page is read straight from it, whatever the number of
contacts not due.
"""
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_contacts_push', table_name='contacts')
    op.create_index('ix_contacts_push', 'contacts', ['shop_id', 'push_state', 'contact_key'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_contacts_push', table_name='contacts')
    op.create_index('ix_contacts_push', 'contacts', ['shop_id', 'push_state'], unique=False)
