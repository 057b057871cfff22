"""partitioned CRLs: crl_partitioning (a CA's partition count, fixed when partitioning is turned on)

Revision ID: crl_0002
Revises: crl_0001
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "crl_0002"
down_revision = "crl_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crl_partitioning",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("partitions", sa.Integer, nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("crl_partitioning")
