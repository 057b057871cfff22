"""a pending renewal remembers the certificate it renews: scep_transactions.renewal_of

Revision ID: core_0003
Revises: core_0002
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0003"
down_revision = "core_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.add_column(sa.Column("renewal_of", sa.String(42)))


def downgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.drop_column("renewal_of")
