"""otp: an index of the live keys by key-encryption key, for the readiness check of every /readyz

Revision ID: otp_0007
Revises: otp_0006
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0007"
down_revision = "otp_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_otp_yubikeys_live_kek", "otp_yubikeys", ["kek_id"],
                    postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL"))


def downgrade() -> None:
    op.drop_index("ix_otp_yubikeys_live_kek", table_name="otp_yubikeys")
