"""otp tables: imported YubiKeys, key history and security events, protocol 2.0 clients, throttling

Revision ID: otp_0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "otp_0001"
down_revision = None
branch_labels = ("otp",)
depends_on = None

TS = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "otp_imports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("actor", sa.String(255)),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("key_count", sa.Integer, nullable=False),
        sa.Column("file_sha256", sa.String(64), nullable=False),
    )
    op.create_table(
        "otp_yubikeys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("serial", sa.BigInteger, nullable=False),
        sa.Column("public_id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("user_name", sa.String(255)),
        sa.Column("last_user", sa.String(255)),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("import_id", sa.Integer, sa.ForeignKey("otp_imports.id"), nullable=False),
        sa.Column("source_line", sa.Integer),
        sa.Column("imported_at", TS, nullable=False),
        sa.Column("enrolled_at", TS),
        sa.Column("revoked_at", TS),
        sa.Column("deleted_at", TS),
        sa.Column("last_used_at", TS),
        sa.Column("usage_ctr", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("session_use", sa.Integer, nullable=False, server_default="-1"),
        sa.Column("otp_timestamp", sa.Integer),
        sa.Column("last_nonce", sa.String(40)),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failures_since", TS),
        sa.Column("blocked_until", TS),
    )
    op.create_index("ux_otp_yubikeys_live_serial", "otp_yubikeys", ["serial"], unique=True,
                    postgresql_where=LIVE, sqlite_where=LIVE)
    op.create_index("ux_otp_yubikeys_live_public_id", "otp_yubikeys", ["public_id"], unique=True,
                    postgresql_where=LIVE, sqlite_where=LIVE)
    op.create_index("ix_otp_yubikeys_serial", "otp_yubikeys", ["serial"])
    op.create_index("ix_otp_yubikeys_status", "otp_yubikeys", ["status"])
    op.create_index("ix_otp_yubikeys_user", "otp_yubikeys", ["user_name"])
    op.create_index("ix_otp_yubikeys_last_user", "otp_yubikeys", ["last_user"])
    op.create_table(
        "otp_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("key_id", sa.Integer),
        sa.Column("serial", sa.BigInteger),
        sa.Column("public_id", sa.String(32)),
        sa.Column("user_name", sa.String(255)),
        sa.Column("client_id", sa.Integer),
        sa.Column("source", sa.String(64)),
        sa.Column("actor", sa.String(255)),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_otp_events_key", "otp_events", ["key_id"])
    op.create_index("ix_otp_events_kind_at", "otp_events", ["kind", "at"])
    op.create_index("ix_otp_events_public_id", "otp_events", ["public_id"])
    op.create_table(
        "otp_clients",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("disabled_at", TS),
    )
    op.create_table(
        "otp_user_throttle",
        sa.Column("user_name", sa.String(255), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("failures_since", TS, nullable=False),
        sa.Column("blocked_until", TS),
    )


def downgrade() -> None:
    for t in ("otp_user_throttle", "otp_clients", "otp_events", "otp_yubikeys", "otp_imports"):
        op.drop_table(t)
