"""otp: throttling per source address and API client instead of per key and user; security events
aggregated per minute; protocol 2.0 clients opt in to unsigned requests

Revision ID: otp_0002
Revises: otp_0001
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0002"
down_revision = "otp_0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "otp_throttle",
        sa.Column("subject", sa.String(160), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", TS, nullable=False),
        sa.Column("blocked_until", TS),
    )
    op.create_index("ix_otp_throttle_window_start", "otp_throttle", ["window_start"])
    op.drop_table("otp_user_throttle")
    # blocks earned by failures that proved nothing about the key's holder are lifted
    op.execute("UPDATE otp_yubikeys SET failures = 0, failures_since = NULL, blocked_until = NULL")
    op.add_column("otp_events", sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"))
    op.add_column("otp_events", sa.Column("dedup_key", sa.String(160)))
    op.create_index("ux_otp_events_dedup", "otp_events", ["dedup_key"], unique=True)
    op.add_column("otp_clients", sa.Column("allow_unsigned", sa.Boolean, nullable=False,
                                           server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("otp_clients") as batch:
        batch.drop_column("allow_unsigned")
    op.drop_index("ux_otp_events_dedup", table_name="otp_events")
    with op.batch_alter_table("otp_events") as batch:
        batch.drop_column("dedup_key")
        batch.drop_column("occurrences")
    op.create_table(
        "otp_user_throttle",
        sa.Column("user_name", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("failures_since", TS, nullable=False),
        sa.Column("blocked_until", TS),
    )
    op.drop_index("ix_otp_throttle_window_start", table_name="otp_throttle")
    op.drop_table("otp_throttle")
