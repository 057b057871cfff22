"""otp: verifications counted per hour, API and status; the report of one status walks an index in its order

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
    # its prefix serves every lookup by status the index it replaces served
    op.create_index("ix_otp_yubikeys_status_serial", "otp_yubikeys", ["status", "serial", "id"])
    op.drop_index("ix_otp_yubikeys_status", table_name="otp_yubikeys")


def downgrade() -> None:
    op.create_index("ix_otp_yubikeys_status", "otp_yubikeys", ["status"])
    op.drop_index("ix_otp_yubikeys_status_serial", table_name="otp_yubikeys")
    op.drop_table("otp_verify_counts")
