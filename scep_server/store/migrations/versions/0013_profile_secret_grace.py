"""a static profile's previous secret may keep working for a grace period after a rotation:
profiles.previous_secret_sha256, previous_secret_until

Revision ID: core_0010
Revises: core_0009
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0010"
down_revision = "core_0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.add_column(sa.Column("previous_secret_sha256", sa.String(64)))
        batch.add_column(sa.Column("previous_secret_until", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("profiles") as batch:
        batch.drop_column("previous_secret_until")
        batch.drop_column("previous_secret_sha256")
