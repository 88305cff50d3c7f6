"""indexes for the applier's and builder's set lookups: orders by checkout and cart, buyers by email and phone

Revision ID: 0013
Revises: 0012
Each inbox batch looks up the orders that complete its checkouts (by checkout id, checkout token or cart
token), the checkouts its orders complete (by cart token) and the customers a guest may be (by email or
phone); each builder chunk looks up who owns each phone number. Without these indexes (or with an index on
the value alone, which SQLite passes over for the shop's primary key) every such lookup read the whole shop,
so a store's backfill slowed as it grew. The pusher takes each target's pending outbox rows in id order: with
the shop, status and target first and the id last, that is an index walk that stops at the batch, not a sort of
every pending row of the shop. The backfill takes a file's parent lines in line order, a chunk at a time: with
the index on (backfill, parent) PostgreSQL read every parent line of the file for each chunk and sorted them (a
backfill of 500,000 orders slowed to a crawl); with the line last, it walks the index from where it stopped.
"""
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

INDEXES = (
    ('ix_orders_checkout', 'orders', ['shop_id', 'checkout_id']),
    ('ix_orders_checkout_token', 'orders', ['shop_id', 'checkout_token']),
    ('ix_orders_cart_token', 'orders', ['shop_id', 'cart_token']),
    ('ix_customers_phone', 'customers', ['shop_id', 'phone']),
    ('ix_customers_shop_email', 'customers', ['shop_id', 'email']),
    ('ix_checkouts_shop_cart_token', 'checkouts', ['shop_id', 'cart_token']),
    ('ix_contacts_phone', 'contacts', ['shop_id', 'phone']),
    ('ix_outbox_pending', 'outbox', ['shop_id', 'status', 'target', 'id']),
)


def upgrade() -> None:
    for name, table, columns in INDEXES:
        op.create_index(name, table, columns, unique=False)
    op.drop_index('ix_backfill_rows_parent', table_name='backfill_rows')
    op.create_index('ix_backfill_rows_parent_line', 'backfill_rows', ['backfill_id', 'parent', 'line'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_backfill_rows_parent_line', table_name='backfill_rows')
    op.create_index('ix_backfill_rows_parent', 'backfill_rows', ['backfill_id', 'parent'], unique=False)
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
