"""Tables of the YubiKey OTP factor (created by otp/migrations/versions/0001_otp.py)."""
from __future__ import annotations

import sqlalchemy as sa

from .statuses import ACTIVE, REVOKED, STATUSES, UNASSIGNED  # noqa: F401 - the tables' users import them here

metadata = sa.MetaData()

TS = sa.DateTime(timezone=True)

otp_imports = sa.Table(
    "otp_imports",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("actor", sa.String(255)),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("key_count", sa.Integer, nullable=False),
    sa.Column("file_sha256", sa.String(64), nullable=False),
)

# One row per imported key. Rows of keys that were ever assigned are never removed: `delete` of a
# revoked key sets deleted_at (the hardware may then be uploaded again as a new row, counters
# afresh), so the report keeps their history. Serial and public ID are unique among live rows.
otp_yubikeys = sa.Table(
    "otp_yubikeys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("serial", sa.BigInteger, nullable=False),
    sa.Column("public_id", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("user_name", sa.String(255)),  # the user the key is enrolled to (ACTIVE only)
    sa.Column("last_user", sa.String(255)),  # kept after revocation, for audit
    # AES key || private ID || access code, AES-256-GCM under the KEK, bound to the public ID;
    # emptied when the key is revoked.
    sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
    sa.Column("kek_id", sa.String(16), nullable=False),
    # SHA-256 of the AES key and private ID (otp.service.secret_fingerprint), kept when the secrets are wiped: a
    # key imported again with the same secrets starts at the counters its earlier rows reached
    sa.Column("secret_sha256", sa.String(64)),
    sa.Column("import_id", sa.Integer, sa.ForeignKey("otp_imports.id"), nullable=False),
    sa.Column("source_line", sa.Integer),
    sa.Column("imported_at", TS, nullable=False),
    sa.Column("enrolled_at", TS),
    sa.Column("revoked_at", TS),
    sa.Column("deleted_at", TS),
    sa.Column("last_used_at", TS),
    # Replay state: the last accepted (usage_ctr & 0x7fff, session_use), -1 before first use.
    sa.Column("usage_ctr", sa.Integer, nullable=False, server_default="-1"),
    sa.Column("session_use", sa.Integer, nullable=False, server_default="-1"),
    sa.Column("otp_timestamp", sa.Integer),
    sa.Column("last_nonce", sa.String(40)),
    # Failure throttling of this key.
    sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
    sa.Column("failures_since", TS),
    sa.Column("blocked_until", TS),
    sa.Index("ux_otp_yubikeys_live_serial", "serial", unique=True,
             postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL")),
    sa.Index("ux_otp_yubikeys_live_public_id", "public_id", unique=True,
             postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL")),
    sa.Index("ix_otp_yubikeys_serial_id", "serial", "id"),  # the report's order
    sa.Index("ix_otp_yubikeys_status_serial", "status", "serial", "id"),  # the report of one status, in order
    sa.Index("ix_otp_yubikeys_user", "user_name"),
    sa.Index("ix_otp_yubikeys_last_user", "last_user"),
    # the live keys sealed under another KEK than the one in use (/readyz at each call): two ranges of it
    sa.Index("ix_otp_yubikeys_live_kek", "kek_id",
             postgresql_where=sa.text("deleted_at IS NULL"), sqlite_where=sa.text("deleted_at IS NULL")),
)

# Key history and security events (enrolment, revocation, deletion, unknown/revoked key use...).
otp_events = sa.Table(
    "otp_events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("key_id", sa.Integer),  # otp_yubikeys.id when known (no FK: unassigned keys may be deleted)
    sa.Column("serial", sa.BigInteger),
    sa.Column("public_id", sa.String(32)),
    sa.Column("user_name", sa.String(255)),
    sa.Column("client_id", sa.Integer),
    sa.Column("source", sa.String(64)),
    sa.Column("actor", sa.String(255)),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
    # Security events are written once per (kind, source, minute): `occurrences` counts the rest.
    sa.Column("occurrences", sa.Integer, nullable=False, server_default="1"),
    sa.Column("dedup_key", sa.String(160)),  # kind|source|minute of a security event, NULL otherwise
    sa.Index("ux_otp_events_dedup", "dedup_key", unique=True),
    sa.Index("ix_otp_events_key", "key_id"),
    sa.Index("ix_otp_events_kind_at", "kind", "at"),
    sa.Index("ix_otp_events_public_id", "public_id"),
)

# Validation protocol 2.0 API clients: id + HMAC-SHA1 key (sealed under the KEK).
otp_clients = sa.Table(
    "otp_clients",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("secret_sealed", sa.LargeBinary, nullable=False),
    sa.Column("kek_id", sa.String(16), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("disabled_at", TS),
    # A legacy client that cannot sign its requests may send them without `h` (off by default).
    sa.Column("allow_unsigned", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Throttling of failures that prove nothing about a key's holder (an OTP that does not decrypt, an
# unknown key...), per source address ("source:...") and per API client ("client:...", "signin:...").
otp_throttle = sa.Table(
    "otp_throttle",
    metadata,
    sa.Column("subject", sa.String(160), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("window_start", TS, nullable=False),
    sa.Column("blocked_until", TS),
    sa.Index("ix_otp_throttle_window_start", "window_start"),
)

# Verifications per hour (both APIs), by protocol 2.0 status: what the admin console's dashboard charts. The
# service counts in memory and adds its counts here every minute (and when it closes); rows are pruned with the
# security events.
otp_verify_counts = sa.Table(
    "otp_verify_counts",
    metadata,
    sa.Column("hour", TS, primary_key=True),  # the hour's start (UTC)
    sa.Column("api", sa.String(16), primary_key=True),  # signin | wsapi
    sa.Column("status", sa.String(32), primary_key=True),  # the protocol 2.0 status (OK, BAD_OTP, ...)
    sa.Column("count", sa.BigInteger, nullable=False),
)

# The key-encryption key every sealed value is under since the last rotation (`scep-server otp kek rotate`,
# otp/rekey.py writes it): one row (id 1), none before the first rotation, when any KEK is taken. An import or a
# new OTP client compares it, in its own write transaction, with the KEK it sealed under (otp/service.py), so
# nothing is committed under a KEK rotated away meanwhile.
otp_kek = sa.Table(
    "otp_kek",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("kek_id", sa.String(16), nullable=False),
    sa.Column("rotated_at", TS, nullable=False),
)
