"""scep_transactions.device_id: the device a pending enrolment's challenge named, given to its certificate when
an administrator approves it

Revision ID: core_0012
Revises: core_0011
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0012"
down_revision = "core_0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.add_column(sa.Column("device_id", sa.String(255)))


def downgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.drop_column("device_id")
