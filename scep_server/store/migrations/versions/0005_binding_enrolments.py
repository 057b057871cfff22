"""binding: device enrolments pre-registered by an administrator; the `default` static profile does not attest

Revision ID: binding_0002
Revises: binding_0001
Create Date: 2026-12-02
"""
import json

from alembic import op
import sqlalchemy as sa

revision = "binding_0002"
down_revision = "binding_0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "device_enrolments",
        sa.Column("profile", sa.String(64), primary_key=True),
        sa.Column("transaction_id", sa.String(255), primary_key=True),
        sa.Column("device_id", sa.String(64), sa.ForeignKey("devices.id"), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("created_by", sa.String(255)),
    )
    op.create_index("ix_device_enrolments_device", "device_enrolments", ["device_id"])
    # The `default` static profile created on first start shares one secret among every enrolment: its
    # certificates prove nothing about a device. Created before `device_trust` existed, it gets it off.
    conn = op.get_bind()
    profiles = sa.table("profiles", sa.column("name", sa.String), sa.column("challenge_kind", sa.String),
                        sa.column("settings", sa.Text))
    row = conn.execute(sa.select(profiles.c.settings).where(profiles.c.name == "default",
                                                            profiles.c.challenge_kind == "static")).first()
    if row is not None:
        settings = json.loads(row.settings or "{}")
        if "device_trust" not in settings:
            settings["device_trust"] = False
            conn.execute(profiles.update().where(profiles.c.name == "default")
                         .values(settings=json.dumps(settings)))


def downgrade() -> None:
    op.drop_index("ix_device_enrolments_device", "device_enrolments")
    op.drop_table("device_enrolments")
