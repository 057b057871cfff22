"""Tables of the crl package: per-CA CRL numbering and the current published CRL."""
from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

# One row per CRL scope (a CA, or a CA's partition): the allocation counter and the newest published CRL.
crl_state = sa.Table(
    "crl_state",
    metadata,
    sa.Column("ca", sa.String(128), primary_key=True),
    # last CRL Number handed out (RFC 5280 §5.2.3: never shared by two CRLs of one scope)
    sa.Column("last_number", sa.BigInteger, nullable=False, server_default="0"),
    # thisUpdate of the last allocation: thisUpdate never goes backwards across processes
    sa.Column("last_this_update", TS),
    # the newest published CRL (published number <= last_number)
    sa.Column("crl_number", sa.BigInteger),
    sa.Column("this_update", TS),
    # its thisUpdate second is the one the CRL recorded before it had: a client's If-Modified-Since of that
    # second may name either, so it is answered with the CRL (crl.web)
    sa.Column("this_update_shared", sa.Boolean),
    sa.Column("next_update", TS),
    sa.Column("der", sa.LargeBinary),
    sa.Column("sha256", sa.String(64)),
    sa.Column("entries", sa.Integer),
    sa.Column("published_at", TS),
    sa.Column("published_by", sa.String(255)),
)

# One row per partitioned CA: how many partitions its certificates are spread over (serial mod partitions),
# fixed when partitioning was first turned on, and when. A CA with a row publishes its partition CRLs.
crl_partitioning = sa.Table(
    "crl_partitioning",
    metadata,
    sa.Column("ca", sa.String(64), primary_key=True),
    sa.Column("partitions", sa.Integer, nullable=False),
    sa.Column("since", TS, nullable=False),
)

# The checker of customers' CAs (crl.check): per CA, issuer key and CDP URL, the last good CRL taken (its CRL
# Number, thisUpdate, digest and scope), so that a restart, or another process, refuses an older CRL as the
# process that took the newer does. Written when a CRL is taken, never per check. Keyed by the URL's SHA-256, not
# the URL: a CDP URL is the certificate's, of any length, and a PostgreSQL index row holds at most about 2.7 KB.
crl_checker_state = sa.Table(
    "crl_checker_state",
    metadata,
    sa.Column("ca", sa.String(64), primary_key=True),
    sa.Column("issuer", sa.String(64), primary_key=True),  # SHA-256 (hex) of the CA's SubjectPublicKeyInfo
    sa.Column("url_sha256", sa.String(64), primary_key=True),  # SHA-256 (hex) of the URL in UTF-8 (checkstore.url_key)
    sa.Column("url", sa.Text, nullable=False),  # the URL itself, for display
    sa.Column("crl_number", sa.String(50)),  # decimal: up to 20 octets (RFC 5280 §5.2.3), beyond a BIGINT
    sa.Column("this_update", TS, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("only_user", sa.Boolean, nullable=False),
    sa.Column("only_ca", sa.Boolean, nullable=False),
    sa.Column("recorded_at", TS, nullable=False),
)

# One row per customer CA whose checker records were forgotten by an administrator: every process forgets the
# CRLs it holds as a floor when the generation moves on (the row stays when the CA is removed, so a CA added
# again under the name and forgotten moves it on still).
crl_checker_resets = sa.Table(
    "crl_checker_resets",
    metadata,
    sa.Column("ca", sa.String(64), primary_key=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("reset_at", TS, nullable=False),
    sa.Column("reset_by", sa.String(255)),
)
