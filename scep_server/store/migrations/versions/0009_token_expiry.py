"""API tokens may expire, and remember when they were last used: api_tokens.expires_at, last_used_at

Revision ID: core_0007
Revises: core_0006
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0007"
down_revision = "core_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True)))
    op.create_index("ix_api_tokens_created", "api_tokens", ["created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_api_tokens_created", "api_tokens")
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("last_used_at")
        batch.drop_column("expires_at")
