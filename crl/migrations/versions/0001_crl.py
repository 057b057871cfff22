"""crl tables: per-CA CRL numbering and the current published CRL

Revision ID: crl_0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "crl_0001"
down_revision = None
branch_labels = ("crl",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "crl_state",
        sa.Column("ca", sa.String(128), primary_key=True),
        sa.Column("last_number", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("last_this_update", TS),
        sa.Column("crl_number", sa.BigInteger),
        sa.Column("this_update", TS),
        sa.Column("next_update", TS),
        sa.Column("der", sa.LargeBinary),
        sa.Column("sha256", sa.String(64)),
        sa.Column("entries", sa.Integer),
        sa.Column("published_at", TS),
        sa.Column("published_by", sa.String(255)),
    )


def downgrade() -> None:
    op.drop_table("crl_state")
