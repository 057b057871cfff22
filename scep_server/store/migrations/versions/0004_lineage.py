"""certificate lineage and enrolment identity: renewal_of, unused_since, enrolled_device_id

Revision ID: core_0002
Revises: core_0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0002"
down_revision = "core_0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("renewal_of", sa.String(42)))
        batch.add_column(sa.Column("unused_since", TS))
        batch.add_column(sa.Column("enrolled_device_id", sa.String(64)))
        batch.create_index("ix_certificates_renewal_of", ["renewal_of"])


def downgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.drop_index("ix_certificates_renewal_of")
        batch.drop_column("enrolled_device_id")
        batch.drop_column("unused_since")
        batch.drop_column("renewal_of")
