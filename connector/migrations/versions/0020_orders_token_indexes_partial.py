"""orders are indexed by checkout and cart only where they carry one

Revision ID: 0020
Revises: 0019
Orders are looked up by checkout id, checkout token and cart token only to match a checkout that an order
completed, and always by a value: an order without one is never looked up by it. Orders read by a backfill carry
none of the three (Shopify's GraphQL has no cart or checkout token), yet each such order added an entry to each
of the three indexes. The indexes now hold only the orders that carry the value.
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None

INDEXES = (("ix_orders_checkout", "checkout_id"), ("ix_orders_checkout_token", "checkout_token"),
           ("ix_orders_cart_token", "cart_token"))


def upgrade() -> None:
    for name, column in INDEXES:
        op.drop_index(name, table_name='orders')
        carried = sa.text(f"{column} IS NOT NULL")
        op.create_index(name, 'orders', ['shop_id', column], unique=False, sqlite_where=carried,
                        postgresql_where=carried)


def downgrade() -> None:
    for name, column in INDEXES:
        op.drop_index(name, table_name='orders')
        op.create_index(name, 'orders', ['shop_id', column], unique=False)
