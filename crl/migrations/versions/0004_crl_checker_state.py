"""crl_checker_state, crl_checker_resets: the last good CRL of each customer CA's URL, kept across restarts

Revision ID: crl_0004
Revises: crl_0003
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "crl_0004"
down_revision = "crl_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "crl_checker_state",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, primary_key=True),
        sa.Column("crl_number", sa.String(50)),
        sa.Column("this_update", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("only_user", sa.Boolean, nullable=False),
        sa.Column("only_ca", sa.Boolean, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "crl_checker_resets",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("reset_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reset_by", sa.String(255)),
    )


def downgrade() -> None:
    op.drop_table("crl_checker_resets")
    op.drop_table("crl_checker_state")
