"""renewal_refusals: the RenewalReqs signed by one of our certificates that were refused, by signer serial and the
SHA-256 of the request's signed attributes, so that the same request is refused again once the reason it was
refused for stops holding (too early for the renewal window, a signer on hold, a device not active)

Revision ID: core_0016
Revises: core_0015
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "core_0016"
down_revision = "core_0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "renewal_refusals",
        sa.Column("signer_serial", sa.String(42), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("refused_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("signer_not_after", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("signer_serial", "request_sha256"),
    )
    op.create_index("ix_renewal_refusals_signer_not_after", "renewal_refusals", ["signer_not_after"])


def downgrade() -> None:
    op.drop_index("ix_renewal_refusals_signer_not_after", table_name="renewal_refusals")
    op.drop_table("renewal_refusals")
