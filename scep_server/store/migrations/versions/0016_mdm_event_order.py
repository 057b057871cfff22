"""binding: mdm_devices.last_event_at, the time the MDM gave its latest webhook event about a device (an older event
delivered later is not applied over it)

Revision ID: binding_0005
Revises: binding_0004
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0005"
down_revision = "binding_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdm_devices") as batch:
        batch.add_column(sa.Column("last_event_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("mdm_devices") as batch:
        batch.drop_column("last_event_at")
