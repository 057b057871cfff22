"""failed logins of the challenge endpoint, shared by all instances

Revision ID: challenge_0002
Revises: challenge_0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "challenge_0002"
down_revision = "challenge_0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "challenge_login_throttle",
        sa.Column("key_sha256", sa.String(64), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("failures_since", TS, nullable=False),
        sa.Column("blocked_until", TS),
    )
    op.create_index("ix_challenge_login_throttle_since", "challenge_login_throttle", ["failures_since"])


def downgrade() -> None:
    op.drop_table("challenge_login_throttle")
