"""history backfill through bulk operations

Revision ID: 0005
Revises: 0004
A shop's backfill per resource (the bulk operation, its file, how many lines were staged and how many objects
queued, so that a killed backfill resumes) and the staged lines of a bulk file until their objects are
reassembled with their nested rows.
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'backfills',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('shop_id', sa.Integer(), nullable=False),
        sa.Column('resource', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('status', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
        sa.Column('since', sa.DateTime(timezone=True), nullable=True),
        sa.Column('operation_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('url', sa.Text(), nullable=True),
        sa.Column('lines', sa.Integer(), nullable=False),
        sa.Column('staged', sa.Integer(), nullable=False),
        sa.Column('queued', sa.Integer(), nullable=False),
        sa.Column('last_queued_line', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shop_id', 'resource', name='uq_backfill_resource'),
    )
    op.create_table(
        'backfill_rows',
        sa.Column('backfill_id', sa.Integer(), nullable=False),
        sa.Column('line', sa.Integer(), nullable=False),
        sa.Column('parent', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('backfill_id', 'line'),
    )
    op.create_index('ix_backfill_rows_parent', 'backfill_rows', ['backfill_id', 'parent'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_backfill_rows_parent', table_name='backfill_rows')
    op.drop_table('backfill_rows')
    op.drop_table('backfills')
