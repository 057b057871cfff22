"""binding: mdm_sources.sync_renewed_at, when the process holding the source's sync claim last renewed it (a lease
with a heartbeat): a claim whose holder stopped renewing it (a process killed in a sync) can be taken by the next
sync after a short time, not only when the claim runs out. NULL, or older than sync_started_at: a claim made by a
version that does not renew, honoured until it runs out

Revision ID: binding_0007
Revises: binding_0006
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0007"
down_revision = "binding_0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("mdm_sources") as batch:
        batch.add_column(sa.Column("sync_renewed_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("mdm_sources") as batch:
        batch.drop_column("sync_renewed_at")
