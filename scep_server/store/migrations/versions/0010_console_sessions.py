"""the admin console's sessions: console_sessions (only a SHA-256 of each session id is stored)

Revision ID: core_0008
Revises: core_0007
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0008"
down_revision = "core_0007"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("id_sha256", sa.String(64), primary_key=True),
        sa.Column("token_id", sa.String(32)),
        sa.Column("principal", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("last_seen_at", TS, nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("ended_at", TS),
    )
    op.create_index("ix_console_sessions_token", "console_sessions", ["token_id"])
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_console_sessions_expires", "console_sessions")
    op.drop_index("ix_console_sessions_token", "console_sessions")
    op.drop_table("console_sessions")
