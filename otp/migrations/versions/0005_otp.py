"""otp: a fingerprint of each key's secrets, so that a key imported again after its deletion keeps its counters

Revision ID: otp_0005
Revises: otp_0004
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0005"
down_revision = "otp_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # rows written before have none (their secrets may be wiped already): they carry nothing forward
    op.add_column("otp_yubikeys", sa.Column("secret_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("otp_yubikeys") as batch:
        batch.drop_column("secret_sha256")
