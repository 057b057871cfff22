"""scep_transactions.csr_der: a decided transaction's CSR without its challengePassword (the rows written before
this revision kept it, a profile's static secret included)

Revision ID: core_0013
Revises: core_0012
Create Date: 2026-12-04
"""
from alembic import op
import sqlalchemy as sa

from scep_server.scep.message import without_challenge_password

revision = "core_0013"
down_revision = "core_0012"
branch_labels = None
depends_on = None

BATCH = 1000


def upgrade() -> None:
    tx = sa.table("scep_transactions", sa.column("profile", sa.String), sa.column("transaction_id", sa.String),
                  sa.column("state", sa.String), sa.column("csr_der", sa.LargeBinary))
    conn = op.get_bind()
    after = ("", "")
    while True:  # by key, a batch at a time: a large inventory is never held in memory
        rows = conn.execute(sa.select(tx.c.profile, tx.c.transaction_id, tx.c.csr_der)
                            .where(tx.c.state.in_(("issued", "rejected")),
                                   sa.tuple_(tx.c.profile, tx.c.transaction_id) > sa.tuple_(*after))
                            .order_by(tx.c.profile, tx.c.transaction_id).limit(BATCH)).all()
        if not rows:
            return
        for profile, key, der in rows:
            masked = without_challenge_password(der)
            if masked != der:
                conn.execute(tx.update().where(tx.c.profile == profile, tx.c.transaction_id == key)
                             .values(csr_der=masked))
        after = (rows[-1].profile, rows[-1].transaction_id)


def downgrade() -> None:
    pass  # what was overwritten is not kept anywhere
