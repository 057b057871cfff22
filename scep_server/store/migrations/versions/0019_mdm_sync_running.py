"""binding: mdm_sources.sync_started_at, when the sync holding the source's claim began (NULL: none runs): a sync
asked for by an administrator takes the claim the periodic sync takes, and is refused while another sync runs

Revision ID: binding_0006
Revises: binding_0005
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0006"
down_revision = "binding_0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdm_sources") as batch:
        batch.add_column(sa.Column("sync_started_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("mdm_sources") as batch:
        batch.drop_column("sync_started_at")
