"""otp: verifications counted per hour, API and status

Revision ID: otp_0004
Revises: otp_0003
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0004"
down_revision = "otp_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "otp_verify_counts",
        sa.Column("hour", sa.DateTime(timezone=True), primary_key=True),
        sa.Column("api", sa.String(16), primary_key=True),
        sa.Column("status", sa.String(32), primary_key=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("otp_verify_counts")
