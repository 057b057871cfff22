"""binding: device_certs.tbs_sha256, the SHA-256 of a bound certificate's TBSCertificate: a certificate presented
with the (ca, serial) of a binding is that certificate only when its DER or its TBSCertificate is the one bound
(another encoding of an ECDSA signature), never by its CA's registration name and serial alone. NULL for the
bindings made before: only their fingerprint identifies them

Revision ID: binding_0008
Revises: binding_0007
Create Date: 2026-12-05
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0008"
down_revision = "binding_0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("device_certs") as batch:
        batch.add_column(sa.Column("tbs_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("device_certs") as batch:
        batch.drop_column("tbs_sha256")
