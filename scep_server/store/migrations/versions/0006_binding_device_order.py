"""binding: the device list's order (registration time, then id) is an index, with and without its status filter

Revision ID: binding_0003
Revises: binding_0002
Create Date: 2026-12-02
"""
from alembic import op

revision = "binding_0003"
down_revision = "binding_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_devices_created", "devices", ["created_at", "id"])
    # its prefix serves every lookup by status the index it replaces served
    op.create_index("ix_devices_status_created", "devices", ["status", "created_at", "id"])
    op.drop_index("ix_devices_status", table_name="devices")


def downgrade() -> None:
    op.create_index("ix_devices_status", "devices", ["status"])
    op.drop_index("ix_devices_status_created", table_name="devices")
    op.drop_index("ix_devices_created", table_name="devices")
