"""ix_scep_transactions_key: a profile's transactions of one key, found without a scan. A request signed by
another key than its CSR's is refused when the profile knows that key already (a transaction in any state, a
certificate in any status), as a captured request signed again by someone else would be
(enrolment.checks.ForeignSigner)

Revision ID: core_0017
Revises: core_0016
Create Date: 2026-12-05
"""
from alembic import op

revision = "core_0017"
down_revision = "core_0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_scep_transactions_key", "scep_transactions", ["public_key_sha256", "profile"])


def downgrade() -> None:
    op.drop_index("ix_scep_transactions_key", table_name="scep_transactions")
