"""one-time SCEP challenges (dynamic challenge profiles)

Revision ID: challenge_0001
Revises:
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = "challenge_0001"
down_revision = None
branch_labels = ("challenge",)
depends_on = "core_0001"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "scep_challenges",
        sa.Column("challenge_sha256", sa.String(64), primary_key=True),
        sa.Column("profile", sa.String(64), sa.ForeignKey("profiles.name", ondelete="CASCADE"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS),
        sa.Column("transaction_id", sa.String(255)),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("requested_by", sa.String(255)),
        sa.Column("payload_identifier", sa.String(255)),
        sa.Column("expectations", sa.Text),
    )
    # the cap on unused challenges counts these
    op.create_index("ix_scep_challenges_unused", "scep_challenges", ["profile", "used_at", "expires_at"])
    op.create_index("ix_scep_challenges_expires", "scep_challenges", ["expires_at"])


def downgrade() -> None:
    op.drop_table("scep_challenges")
