"""core tables: CAs, profiles, certificate inventory, SCEP transactions, API tokens, events

Revision ID: core_0001
Revises:
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "cas",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("cert_der", sa.LargeBinary, nullable=False),
        sa.Column("ski_hex", sa.String(128), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "profiles",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("ca", sa.String(64), sa.ForeignKey("cas.name"), nullable=False),
        sa.Column("challenge_kind", sa.String(16), nullable=False),
        sa.Column("static_secret_sha256", sa.String(64)),
        sa.Column("settings", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(42), primary_key=True),
        sa.Column("ca", sa.String(64), sa.ForeignKey("cas.name"), nullable=False),
        sa.Column("profile", sa.String(64)),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("sans", sa.Text, nullable=False, server_default="[]"),
        sa.Column("not_before", TS, nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, server_default="valid"),
        sa.Column("revocation_reason", sa.Integer),
        sa.Column("revoked_at", TS),
        sa.Column("invalidity_date", TS),
        sa.Column("transaction_id", sa.String(255)),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("issued_at", TS, nullable=False),
        sa.Column("first_used_at", TS),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_certificates_status_issued", "certificates", ["status", "issued_at"])
    op.create_index("ix_certificates_ca_status", "certificates", ["ca", "status"])
    op.create_index("ix_certificates_public_key", "certificates", ["public_key_sha256"])
    op.create_table(
        "scep_transactions",
        sa.Column("profile", sa.String(64), primary_key=True),
        sa.Column("transaction_id", sa.String(255), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message_type", sa.Integer, nullable=False),
        sa.Column("csr_der", sa.LargeBinary, nullable=False),
        sa.Column("public_key_sha256", sa.String(64), nullable=False),
        sa.Column("serial", sa.String(42), sa.ForeignKey("certificates.serial")),
        sa.Column("fail_text", sa.Text),
        sa.Column("decided_by", sa.String(255)),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_index("ix_scep_transactions_state", "scep_transactions", ["state"])
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("disabled_at", TS),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", TS, nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(255)),
        sa.Column("actor", sa.String(255)),
        sa.Column("data", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("ix_events_kind_at", "events", ["kind", "at"])
    op.create_index("ix_events_subject", "events", ["subject"])


def downgrade() -> None:
    for t in ("events", "api_tokens", "scep_transactions", "certificates", "profiles", "cas"):
        op.drop_table(t)
