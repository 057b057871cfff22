"""profiles stored before pending_expiry_days existed keep their pending enrolments waiting until decided (an
explicit 0 in their settings); profiles made from now on get the default, 30 days. An upgrade rejects nothing a
device was told is PENDING: an administrator opts an existing profile in with `profile update --settings-json`

Revision ID: core_0015
Revises: core_0014
Create Date: 2026-12-04
"""
import json

from alembic import op
import sqlalchemy as sa

revision = "core_0015"
down_revision = "core_0014"
branch_labels = None
depends_on = None

_profiles = sa.table("profiles", sa.column("name", sa.String), sa.column("settings", sa.Text))


def upgrade() -> None:
    conn = op.get_bind()
    for name, text in conn.execute(sa.select(_profiles.c.name, _profiles.c.settings)).all():
        try:
            settings = json.loads(text or "{}")
        except ValueError:  # unreadable settings are refused when the profile is read; left as they are
            continue
        if not isinstance(settings, dict) or "pending_expiry_days" in settings:
            continue
        settings["pending_expiry_days"] = 0
        conn.execute(_profiles.update().where(_profiles.c.name == name)
                     .values(settings=json.dumps(settings, sort_keys=True)))


def downgrade() -> None:
    conn = op.get_bind()
    for name, text in conn.execute(sa.select(_profiles.c.name, _profiles.c.settings)).all():
        try:
            settings = json.loads(text or "{}")
        except ValueError:
            continue
        if isinstance(settings, dict) and settings.pop("pending_expiry_days", None) is not None:
            conn.execute(_profiles.update().where(_profiles.c.name == name)
                         .values(settings=json.dumps(settings, sort_keys=True)))
