"""crl_state.this_update_shared: whether the newest CRL's thisUpdate second is its predecessor's too

Revision ID: crl_0003
Revises: crl_0002
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

revision = "crl_0003"
down_revision = "crl_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # a CRL recorded before has no predecessor known to share its second: If-Modified-Since decides as before
    op.add_column("crl_state", sa.Column("this_update_shared", sa.Boolean))


def downgrade() -> None:
    with op.batch_alter_table("crl_state") as batch:
        batch.drop_column("this_update_shared")
