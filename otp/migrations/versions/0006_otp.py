"""otp: the key-encryption key recorded by the last rotation, checked by the imports and new clients written meanwhile

Revision ID: otp_0006
Revises: otp_0005
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0006"
down_revision = "otp_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # empty until the first rotation: any KEK is taken until then
    op.create_table(
        "otp_kek",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("otp_kek")
