"""scep_transactions.signer_key_sha256: the SHA-256 of the key that signed an enrolment's request (its
SubjectPublicKeyInfo), so that a CertPoll for it is answered only to that signer. Rows written before stay without
one (NULL): a CertPoll for them is answered as before

Revision ID: core_0014
Revises: core_0013
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0014"
down_revision = "core_0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.add_column(sa.Column("signer_key_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("scep_transactions") as batch:
        batch.drop_column("signer_key_sha256")
