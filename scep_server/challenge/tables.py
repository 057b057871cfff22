"""Tables of the challenge package (migrations: store/migrations/versions/0002_challenge.py, 0005_...)."""
from __future__ import annotations

import sqlalchemy as sa

from ..store.tables import profiles

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

challenges = sa.Table(
    "scep_challenges",
    metadata,
    # SHA-256 of the one-time challenge (the challenge itself is never stored)
    sa.Column("challenge_sha256", sa.String(64), primary_key=True),
    sa.Column("profile", sa.String(64), sa.ForeignKey(profiles.c.name, ondelete="CASCADE"), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("expires_at", TS, nullable=False),
    sa.Column("used_at", TS),
    # the SCEP transaction that redeemed it, and the SHA-256 of its CSR's SubjectPublicKeyInfo (migration 0018):
    # only a retry of that transaction with that key gets past the used challenge
    sa.Column("transaction_id", sa.String(255)),
    sa.Column("public_key_sha256", sa.String(64)),
    # page | json | webhook | cli | api
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("requested_by", sa.String(255)),
    # Jamf's payloadIdentifier (SCEPChallenge webhook)
    sa.Column("payload_identifier", sa.String(255)),
    # JSON {"subject": RFC 4514 string, "sans": ["dns:..", "email:..", "ip:..", "uri:.."]} the CSR must match
    sa.Column("expectations", sa.Text),
    # the cap on unused challenges counts these
    sa.Index("ix_scep_challenges_unused", "profile", "used_at", "expires_at"),
    sa.Index("ix_scep_challenges_expires", "expires_at"),
)

# failed HTTP Basic logins of the challenge endpoint, shared by every process and instance
# (migration: store/migrations/versions/0005_challenge_login_throttle.py)
login_throttle = sa.Table(
    "challenge_login_throttle",
    metadata,
    # SHA-256 of "address|user \0 profile \0 address or username": fixed size, no username in clear
    sa.Column("key_sha256", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("failures_since", TS, nullable=False),
    sa.Column("blocked_until", TS),
    sa.Index("ix_challenge_login_throttle_since", "failures_since"),
)

# addresses that logged in with a profile's Basic credentials recently: they are not held back by the username's
# lockout (their own address counter still applies); shared by every process and instance
# (migration: store/migrations/versions/0024_challenge_login_known.py)
login_known = sa.Table(
    "challenge_login_known",
    metadata,
    # SHA-256 of "known \0 profile \0 username \0 address": fixed size, neither in clear
    sa.Column("key_sha256", sa.String(64), primary_key=True),
    sa.Column("last_login", TS, nullable=False),
    sa.Index("ix_challenge_login_known_last", "last_login"),
)
