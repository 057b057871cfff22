"""audit trail: the hash chain of events (events.chain_seq, events.chain_hash, the events_chain head) and an
index for the actor filter

Revision ID: core_0006
Revises: core_0005
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0006"
down_revision = "core_0005"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("chain_seq", sa.BigInteger))
        batch.add_column(sa.Column("chain_hash", sa.String(64)))
    op.create_index("ix_events_actor", "events", ["actor"])
    op.create_index("ix_events_chain", "events", ["chain_seq", "id"])
    op.create_table(
        "events_chain",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("anchor_count", sa.BigInteger, nullable=False),
        sa.Column("anchor_hash", sa.String(64), nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("events_chain")
    op.drop_index("ix_events_chain", table_name="events")
    op.drop_index("ix_events_actor", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("chain_hash")
        batch.drop_column("chain_seq")
