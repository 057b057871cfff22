"""crl_checker_state: keyed by the SHA-256 of the URL (url_sha256), the URL kept beside it for display

A CDP URL is the certificate's, of any length; a PostgreSQL index row holds at most about 2.7 KB, so the record of
a CRL at a longer URL could not be written (and that CRL was never taken). The rows recorded before are kept.

Revision ID: crl_0005
Revises: crl_0004
Create Date: 2026-12-05
"""
import hashlib

from alembic import op
import sqlalchemy as sa

revision = "crl_0005"
down_revision = "crl_0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
# the longest URL (in UTF-8) the schema before this revision indexes on PostgreSQL, with room for ca and issuer
OLD_INDEXABLE = 2000


def _columns() -> list:
    return [sa.Column("crl_number", sa.String(50)),
            sa.Column("this_update", TS, nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("only_user", sa.Boolean, nullable=False),
            sa.Column("only_ca", sa.Boolean, nullable=False),
            sa.Column("recorded_at", TS, nullable=False)]


def _url_key(url: str) -> str:
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()  # as crl.checkstore.url_key


def _rows() -> list[dict]:
    """Every record (a few per customer CA: one per issuer key and URL), read before the table is made again."""
    table = sa.Table("crl_checker_state", sa.MetaData(), sa.Column("ca", sa.String(64)),
                     sa.Column("issuer", sa.String(64)), sa.Column("url", sa.Text), *_columns())
    return [dict(row._mapping) for row in op.get_bind().execute(sa.select(table))]


def upgrade() -> None:
    rows = _rows()
    op.drop_table("crl_checker_state")
    table = op.create_table(
        "crl_checker_state",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("url_sha256", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, nullable=False),
        *_columns(),
    )
    if rows:
        op.bulk_insert(table, [dict(row, url_sha256=_url_key(row["url"])) for row in rows])


def downgrade() -> None:
    rows = _rows()
    if op.get_bind().dialect.name == "postgresql":
        # a record the old key cannot hold is dropped: that URL's next valid CRL is taken, as after a forget
        rows = [row for row in rows if len(row["url"].encode("utf-8", "surrogatepass")) <= OLD_INDEXABLE]
    op.drop_table("crl_checker_state")
    table = op.create_table(
        "crl_checker_state",
        sa.Column("ca", sa.String(64), primary_key=True),
        sa.Column("issuer", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text, primary_key=True),
        *_columns(),
    )
    if rows:
        op.bulk_insert(table, rows)
