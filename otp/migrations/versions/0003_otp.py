"""otp: the key report's order (serial, then row id) is an index

Revision ID: otp_0003
Revises: otp_0002
Create Date: 2026-12-02
"""
from alembic import op

revision = "otp_0003"
down_revision = "otp_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # its prefix serves every lookup by serial the index it replaces served
    op.create_index("ix_otp_yubikeys_serial_id", "otp_yubikeys", ["serial", "id"])
    op.drop_index("ix_otp_yubikeys_serial", table_name="otp_yubikeys")


def downgrade() -> None:
    op.create_index("ix_otp_yubikeys_serial", "otp_yubikeys", ["serial"])
    op.drop_index("ix_otp_yubikeys_serial_id", table_name="otp_yubikeys")
