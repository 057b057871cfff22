"""partitioned CRLs: certificates.crl_partition (the partition its CRL Distribution Point names) and its indexes

Revision ID: core_0011
Revises: core_0010
Create Date: 2026-12-03
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0011"
down_revision = "core_0010"
branch_labels = None
depends_on = None

PARTITIONED = sa.text("crl_partition IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("certificates") as batch:
        batch.add_column(sa.Column("crl_partition", sa.Integer))
    # a partition's CRL entries (only certificates issued while partitioning was on are in the index); covering, so
    # that a partition is read from the index alone rather than from rows spread over the whole table
    op.create_index("ix_certificates_crl_partition", "certificates",
                    ["ca", "crl_partition", "status", "not_after", "serial", "revoked_at", "revocation_reason",
                     "invalidity_date"],
                    postgresql_where=PARTITIONED, sqlite_where=PARTITIONED)
    # the partitions whose certificates changed since a time (which partition CRLs to look at after a change)
    op.create_index("ix_certificates_partition_updated", "certificates", ["ca", "updated_at"],
                    postgresql_where=PARTITIONED, sqlite_where=PARTITIONED)


def downgrade() -> None:
    op.drop_index("ix_certificates_partition_updated", table_name="certificates")
    op.drop_index("ix_certificates_crl_partition", table_name="certificates")
    with op.batch_alter_table("certificates") as batch:
        batch.drop_column("crl_partition")
