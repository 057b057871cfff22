"""binding tables: devices, certificate bindings, spent attestation nonces and their key, external CAs

Revision ID: binding_0001
Revises:
Create Date: 2026-11-24
"""
from alembic import op
import sqlalchemy as sa

revision = "binding_0001"
down_revision = None
branch_labels = ("binding",)
depends_on = "core_0001"

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False, server_default=""),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(255)),
        sa.Column("status_changed_at", TS, nullable=False),
        sa.Column("status_changed_by", sa.String(255)),
        sa.Column("status_reason", sa.Text),
    )
    op.create_index("ix_devices_status", "devices", ["status"])
    op.create_table(
        "device_certs",
        sa.Column("fingerprint_sha256", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("ca", sa.String(64), nullable=False),
        sa.Column("external", sa.Boolean, nullable=False),
        sa.Column("serial", sa.String(42), nullable=False),
        sa.Column("not_after", TS, nullable=False),
        sa.Column("current", sa.Boolean, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("retired_reason", sa.String(32)),
        sa.Column("bound_at", TS, nullable=False),
        sa.Column("retired_at", TS),
        sa.UniqueConstraint("ca", "serial", name="uq_device_certs_ca_serial"),
    )
    op.create_index("ix_device_certs_device", "device_certs", ["device_id"])
    op.create_index("uq_device_certs_current", "device_certs", ["device_id"], unique=True,
                    sqlite_where=sa.text("current"), postgresql_where=sa.text("current"))
    op.create_table(
        "attestation_spent_nonces",
        sa.Column("nonce_sha256", sa.String(64), primary_key=True),
        sa.Column("device_id", sa.String(64), nullable=False),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("used_at", TS, nullable=False),
    )
    op.create_index("ix_attestation_spent_nonces_expires", "attestation_spent_nonces", ["expires_at"])
    op.create_table(
        "attestation_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("secret", sa.LargeBinary, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "external_cas",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("cert_der", sa.LargeBinary, nullable=False),
        sa.Column("fingerprint_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(255)),
    )


def downgrade() -> None:
    for t in ("external_cas", "attestation_keys", "attestation_spent_nonces", "device_certs", "devices"):
        op.drop_table(t)
