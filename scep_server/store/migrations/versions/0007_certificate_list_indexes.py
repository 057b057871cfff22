"""indexes of the certificate lists: newest first by (issued_at, serial), by enrolled device, by expiry

Revision ID: core_0005
Revises: core_0004
Create Date: 2026-12-02
"""
from alembic import op

revision = "core_0005"
down_revision = "core_0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a page of `cert list` / GET /api/v1/certificates walks this index backwards instead of sorting the table
    op.create_index("ix_certificates_issued", "certificates", ["issued_at", "serial"])
    # the device filter's "enrolled for this device" half
    op.create_index("ix_certificates_enrolled_device", "certificates", ["enrolled_device_id"])
    # the expiry filters (certificates to renew soon)
    op.create_index("ix_certificates_not_after", "certificates", ["not_after"])


def downgrade() -> None:
    op.drop_index("ix_certificates_not_after", table_name="certificates")
    op.drop_index("ix_certificates_enrolled_device", table_name="certificates")
    op.drop_index("ix_certificates_issued", table_name="certificates")
