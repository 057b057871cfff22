"""core: the enrolment list's order (creation time, then profile and transaction id) is an index, with and
without its state filter

Revision ID: core_0004
Revises: core_0003
Create Date: 2026-12-02
"""
from alembic import op

revision = "core_0004"
down_revision = "core_0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_scep_transactions_created", "scep_transactions", ["created_at", "profile", "transaction_id"])
    # its prefix serves every lookup by state the index it replaces served
    op.create_index("ix_scep_transactions_state_created", "scep_transactions",
                    ["state", "created_at", "profile", "transaction_id"])
    op.drop_index("ix_scep_transactions_state", table_name="scep_transactions")


def downgrade() -> None:
    op.create_index("ix_scep_transactions_state", "scep_transactions", ["state"])
    op.drop_index("ix_scep_transactions_state_created", table_name="scep_transactions")
    op.drop_index("ix_scep_transactions_created", table_name="scep_transactions")
