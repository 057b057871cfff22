"""the public key of the request that used a one-time challenge

Revision ID: challenge_0003
Revises: challenge_0002
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "challenge_0003"
down_revision = "challenge_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("scep_challenges") as batch:
        batch.add_column(sa.Column("public_key_sha256", sa.String(64)))


def downgrade() -> None:
    with op.batch_alter_table("scep_challenges") as batch:
        batch.drop_column("public_key_sha256")
