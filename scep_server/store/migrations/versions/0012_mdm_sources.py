"""binding: MDM sources (Jamf Pro, Intune) and what each last said of our devices

Revision ID: binding_0004
Revises: binding_0003
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0004"
down_revision = "binding_0003"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "mdm_sources",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("config", sa.Text, nullable=False),
        sa.Column("webhook_secret_sha256", sa.String(64)),
        sa.Column("delta_link", sa.Text),
        sa.Column("directory_disabled", sa.Text),
        sa.Column("sync_claimed_until", TS),
        sa.Column("last_sync_at", TS),
        sa.Column("last_sync_outcome", sa.Text),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "mdm_devices",
        sa.Column("source", sa.String(32), primary_key=True),
        sa.Column("device_id", sa.String(64), primary_key=True),
        sa.Column("mdm_id", sa.String(255)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("last_seen_at", TS),
        sa.Column("missing_since", TS),
        sa.Column("updated_at", TS, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("mdm_devices")
    op.drop_table("mdm_sources")
