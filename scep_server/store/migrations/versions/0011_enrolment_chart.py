"""the enrolments' creation-order index carries their state: the console's chart (enrolments per hour and state)
reads it alone

Revision ID: core_0009
Revises: core_0008
Create Date: 2026-12-02
"""
from alembic import op

revision = "core_0009"
down_revision = "core_0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # its prefix still serves the enrolment list's order, as the index it replaces did
    op.create_index("ix_scep_transactions_created_state", "scep_transactions",
                    ["created_at", "profile", "transaction_id", "state"])
    op.drop_index("ix_scep_transactions_created", table_name="scep_transactions")


def downgrade() -> None:
    op.create_index("ix_scep_transactions_created", "scep_transactions", ["created_at", "profile", "transaction_id"])
    op.drop_index("ix_scep_transactions_created_state", table_name="scep_transactions")
