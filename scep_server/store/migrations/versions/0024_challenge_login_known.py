"""addresses that logged in at the challenge endpoint recently (exempt from the username's lockout)

Revision ID: challenge_0004
Revises: challenge_0003
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa

revision = "challenge_0004"
down_revision = "challenge_0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "challenge_login_known",
        sa.Column("key_sha256", sa.String(64), primary_key=True),
        sa.Column("last_login", TS, nullable=False),
    )
    op.create_index("ix_challenge_login_known_last", "challenge_login_known", ["last_login"])


def downgrade() -> None:
    op.drop_table("challenge_login_known")
